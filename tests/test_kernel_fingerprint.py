"""The choice between exact and tolerant comparison with float fixtures, on mocked machines."""

import json
from dataclasses import replace

from tests.kernel_fingerprint import REQUIRED, KernelFingerprint, _cpuinfo, compare, current

XEON = KernelFingerprint(vendor="GenuineIntel", model_name="Intel(R) Xeon(R) Processor", cpu_family="6",
                         cpu_model="143", capability="AVX512", torch="2.14.1+cu130", onednn="3.12.0", mkl="2024.2",
                         flags={"avx512f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True})
EPYC = KernelFingerprint(vendor="AuthenticAMD", model_name="AMD EPYC", cpu_family="26", cpu_model="2",
                         capability="AVX512", torch="2.14.1+cu130", onednn="3.12.0", mkl="2024.2",
                         flags={"avx512f": True, "avx512_bf16": True, "amx_tile": False, "amx_bf16": False})


def test_the_fixture_machine_itself_compares_exactly():
    assert compare(XEON, XEON).exact and compare(XEON, XEON).reasons == ()


def test_same_instruction_set_other_vendor_is_tolerant():
    # The failure of issue 22: both report torch capability AVX512.
    how = compare(XEON, EPYC)
    assert not how.exact
    assert any(r.startswith("vendor:") for r in how.reasons)
    assert "tolerant" in how.describe() and "AuthenticAMD" in how.describe()


def test_each_recorded_field_can_break_exactness():
    for change in ({"model_name": "Intel(R) Xeon(R) Platinum 8480+"}, {"cpu_model": "106"},
                   {"capability": "AVX2"}, {"torch": "2.15.0"}, {"onednn": "3.13.0"}, {"mkl": "2025.0"}):
        here = replace(XEON, **change)
        how = compare(XEON, here)
        assert not how.exact, change
        assert any(r.startswith(next(iter(change))) for r in how.reasons), (change, how.reasons)


def test_a_kernel_flag_differing_or_unknown_is_tolerant():
    no_amx = replace(XEON, flags={**XEON.flags, "amx_bf16": False})
    assert not compare(XEON, no_amx).exact
    unknown = replace(XEON, flags={})  # e.g. no /proc/cpuinfo
    assert not compare(XEON, unknown).exact


def test_fields_the_fixture_did_not_record_are_not_compared():
    recorded = replace(XEON, cpu_family=None, cpu_model=None, mkl=None, flags={"avx512f": True})
    here = replace(XEON, cpu_family="6", cpu_model="207", mkl="2099.1",
                   flags={**XEON.flags, "avx512_fp16": True})
    assert compare(recorded, here).exact


def test_a_fixture_without_the_required_fields_is_never_exact():
    for name in REQUIRED:
        recorded = replace(XEON, **{name: None})
        how = compare(recorded, XEON)
        assert not how.exact and any(name in r for r in how.reasons), name


def test_round_trip_through_json(tmp_path):
    path = tmp_path / "machine.json"
    path.write_text(EPYC.to_json())
    assert KernelFingerprint.from_json(path) == EPYC
    assert json.loads(path.read_text())["vendor"] == "AuthenticAMD"


def test_cpuinfo_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon X\nflags\t\t: fpu avx2 amx_bf16\n\n"
                    "processor\t: 1\nvendor_id\t: Other\n")
    fields = _cpuinfo(info)
    assert fields["vendor_id"] == "GenuineIntel" and "amx_bf16" in fields["flags"].split()
    assert _cpuinfo(tmp_path / "absent") == {}


def test_this_machine_has_a_fingerprint_with_the_required_fields_where_linux_tells_them():
    fp = current()
    assert fp.capability and fp.torch
    assert compare(fp, fp).exact or any("not recorded" in r for r in compare(fp, fp).reasons)
