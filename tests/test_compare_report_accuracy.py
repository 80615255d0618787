"""The primary-endpoint tables show each method's conditional accuracy in the endpoint's group,
so a lower copy rate bought with samples that leave their class is visible where it is read."""

from cbdm_core.experiments.compare_report import _primary_table


def _summary(per_seed: dict, **rest) -> dict:
    vals = list(per_seed.values())
    return {"per_seed": per_seed, "mean": sum(vals) / len(vals), "sd": 0.0, **rest}


def _method(mem: float, acc: float, diff: dict | None) -> dict:
    summary = {"memorization_pixels_tail": _summary({0: mem}), "accuracy_tail": _summary({0: acc})}
    return {"summary": summary, "guidance": {"chosen": 1.0},
            "difference_to_baseline": None if diff is None else {"memorization_pixels_tail": diff}}


def _doc(with_accuracy: bool = True) -> dict:
    diff = {"diff_mean": -0.095, "t_interval": None, "p_image": 1e-6, "p_holm": 1e-6}
    methods = {"ddpm": _method(0.095, 1.0, None), "noise": _method(0.0, 0.1, diff)}
    if not with_accuracy:
        for m in methods.values():
            del m["summary"]["accuracy_tail"]
    return {"baseline": "ddpm", "protocol": {"seeds": [0]}, "methods": methods}


def test_primary_table_shows_the_group_accuracy_and_its_drop():
    lines = _primary_table(_doc(), "memorization_pixels_tail")
    assert lines[0].rstrip(" |").endswith("accuracy_tail")
    noise = next(line for line in lines if line.startswith("| noise"))
    assert noise.rstrip(" |").endswith("0.1 (-0.9)")
    base = next(line for line in lines if line.startswith("| ddpm"))
    assert base.rstrip(" |").endswith("| 1")
    assert any("leave their class" in line for line in lines)


def test_no_accuracy_column_without_the_value_or_for_an_accuracy_endpoint():
    assert "accuracy_tail" not in _primary_table(_doc(with_accuracy=False), "memorization_pixels_tail")[0]
    doc = _doc()
    for m in doc["methods"].values():
        m["difference_to_baseline"] = m["difference_to_baseline"] and {
            "accuracy_tail": m["difference_to_baseline"]["memorization_pixels_tail"]}
    header = _primary_table(doc, "accuracy_tail")[0]
    assert header.count("accuracy_tail") == 0 and "p Holm" in header
