"""A harness for fault-injection tests: runs ``cbdm ARGS`` (``python -c HARNESS ARGS``) and
SIGKILLs its own process inside a chosen atomic write.

It wraps ``os.replace``, the last step of every atomic write (cbdm_core/atomic.py), and at the
first replace whose target matches the regular expression ``$H_TARGET`` kills the process:
``H_MODE=torn`` with the temporary file cut to ``$H_CUT`` of its size (a kill while writing it),
``before`` with it complete (a kill before the rename), ``after`` just after the rename (before
the folder is synced). Every finished write and every kill is appended to the file ``$H_LOG``.
No target: the command runs as usual (its writes are still logged). One torch thread, like the
other fault-injection tests, so runs are bitwise comparable.
"""

HARNESS = r"""
import os, signal, sys
log, target, mode, cut = os.environ["H_LOG"], os.environ.get("H_TARGET", ""), os.environ.get("H_MODE", ""), \
    float(os.environ.get("H_CUT", "0.5"))
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    hit = bool(target) and str(src).endswith(".tmp") and __import__("re").search(target, str(dst)) is not None
    if hit and mode == "torn":  # killed while writing the temporary file
        size = os.path.getsize(src)
        os.truncate(src, int(size * cut))
    if hit and mode in ("torn", "before"):
        with open(log, "a") as fh:
            fh.write(f"killed {mode} {dst}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if str(src).endswith(".tmp"):
        with open(log, "a") as fh:
            fh.write(f"{'killed after' if hit else 'wrote'} {dst}\n")
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
import torch
torch.set_num_threads(1)
from cbdm_cli.main import cli
cli.main(sys.argv[1:], prog_name="cbdm")
"""
