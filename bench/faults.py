#!/usr/bin/env python3
"""Fault battery: hostile but realistic inputs and kills, each graded GOOD / POOR / BAD.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 .venv/bin/python bench/faults.py [--kills 30] [--only NAME]

Every case runs the real command lines (``pretrain_gpt.py``, ``tools/*.py``) in fresh processes
on a tiny GPT (byte tokens; Shakespeare from the bundled corpus where data files matter):

- GOOD: the run did the right thing (refused in one line naming the file/flag, or finished
  without touching what it must not), and nothing was lost or executed;
- POOR: nothing was lost, but the user got a traceback instead of a sentence (or a vague line);
- BAD: data lost, garbage trained silently, code executed, or success reported for a failure.

The kill -9 loop trains with a save every step and kills the trainer ``--kills`` times at random
moments (mid-step, mid-save), relaunching each time; it is GOOD when every ``latest`` stayed
loadable and the final weights equal an uninterrupted run's bit for bit; ``--async-kills`` runs
the same loop with ``--async-save`` (kills land during background writes). Prints one line per
case and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from bench.fault_helpers import (  # noqa: E402
    ENV,
    PY,
    Result,
    loss_mismatches,
    _Payload,
    make_data,
    refused,
    run,
    snapshot,
    train,
)
from tests.helpers import TINY  # noqa: E402

class Battery:
    """The cases; each returns (grade, note). ``self.tmp`` is a fresh directory per case."""

    def __init__(self, data: str):
        self.data = data  # a data list of one byte-tokenized Shakespeare dataset
        self.tmp = ""

    def _saved(self, iters: int = 2, *extra: str) -> str:
        save = os.path.join(self.tmp, "ckpt")
        p = train("--train-iters", str(iters), "--save", save, "--lr-decay-style", "constant", *extra)
        assert p.returncode == 0, p.stderr[-2000:]
        return save

    def _prefix(self) -> str:
        with open(self.data) as f:
            prefix = f.read().split()[1]
        out = os.path.join(self.tmp, "plays")
        for ext in (".bin", ".idx"):
            shutil.copy(prefix + ext, out + ext)
        with open(os.path.join(self.tmp, "list.txt"), "w") as f:
            f.write(f"1.0 {out} plays\n")
        return out

    def _dry(self) -> subprocess.CompletedProcess:
        return train("--train-iters", "2", "--dry-run", data=os.path.join(self.tmp, "list.txt"))

    # ---- committed checkpoints ---------------------------------------------------------------

    def relaunch_finished_run(self) -> Result:
        return self._relaunch_leaves_it_untouched(self._saved())

    def relaunch_with_fewer_iters(self) -> Result:
        return self._relaunch_leaves_it_untouched(self._saved(3))

    def _relaunch_leaves_it_untouched(self, save: str) -> Result:
        """A 2-iteration relaunch onto ``save`` (finished at 2 or more): exit 0, nothing rewritten."""
        before = snapshot(save)
        p = train("--train-iters", "2", "--save", save, "--load", save, "--lr-decay-style", "constant")
        if snapshot(save) != before:
            return "BAD", "the committed checkpoint was rewritten"
        return ("GOOD", "exit 0, untouched") if p.returncode == 0 else ("POOR", f"exit {p.returncode}")

    def finetune_into_own_save_dir(self) -> Result:
        save = self._saved()
        before = snapshot(save)
        p = train("--train-iters", "2", "--save", save, "--load", save, "--finetune")
        if snapshot(save) != before:
            return "BAD", "a committed step was overwritten"
        return refused(p, "committed checkpoint")

    def load_typo(self) -> Result:
        p = train("--train-iters", "1", "--load", os.path.join(self.tmp, "typo"))
        return refused(p, "typo", "does not exist")

    def load_typo_finetune(self) -> Result:
        p = train("--train-iters", "1", "--load", os.path.join(self.tmp, "typo"), "--finetune",
                  "--save", os.path.join(self.tmp, "out"))
        return refused(p, "typo", "does not exist")

    def truncated_model_file(self) -> Result:
        save = self._saved()
        with open(os.path.join(save, "global_step2", "mp_rank_00_model_states.pt"), "r+b") as f:
            f.truncate(100)
        return refused(train("--train-iters", "3", "--load", save), "mp_rank_00_model_states.pt")

    def missing_completion_marker(self) -> Result:
        save = self._saved()
        os.remove(os.path.join(save, "global_step2", "run_metadata.json"))
        return refused(train("--train-iters", "3", "--load", save), "run_metadata.json")

    def convert_uncommitted(self) -> Result:
        save = self._saved()
        os.remove(os.path.join(save, "global_step2", "run_metadata.json"))
        p = run("tools/convert_checkpoint.py", "--input", os.path.join(save, "global_step2"))
        if os.path.exists(os.path.join(save, "latest_universal")):
            return "BAD", "latest_universal moved to an uncommitted step"
        return refused(p, "run_metadata.json")

    def export_uncommitted(self) -> Result:
        save = self._saved()
        os.remove(os.path.join(save, "global_step2", "run_metadata.json"))
        p = run("tools/export_hf.py", "--input", save, "--output", os.path.join(self.tmp, "hf"))
        return refused(p, "run_metadata.json")

    def pickle_payload(self) -> Result:
        import torch

        save = self._saved()
        marker = os.path.join(self.tmp, "EXECUTED")
        path = os.path.join(save, "global_step2", "mp_rank_00_model_states.pt")
        state = torch.load(path, weights_only=False)
        state["x"] = _Payload(marker)
        torch.save(state, path)
        results = [refused(train("--train-iters", "3", "--load", save), "refused to load"),
                   refused(run("tools/convert_checkpoint.py", "--input", save), "refused to load")]
        if os.path.exists(marker):
            return "BAD", "the payload ran"
        return min(results, key=lambda r: ("BAD", "POOR", "GOOD").index(r[0]))

    # ---- locks, stops ------------------------------------------------------------------------

    def second_trainer_on_save_dir(self) -> Result:
        save = os.path.join(self.tmp, "ckpt")
        holder = subprocess.Popen([PY, "-c", "import time; time.sleep(120)"])
        os.makedirs(save)
        with open(os.path.join(save, ".lock"), "w") as f:
            json.dump({"host": os.uname().nodename, "pid": holder.pid, "started": "now"}, f)
        try:
            return refused(train("--train-iters", "1", "--save", save), f"pid {holder.pid}")
        finally:
            holder.kill()

    def stale_lock(self) -> Result:
        save = os.path.join(self.tmp, "ckpt")
        os.makedirs(save)
        with open(os.path.join(save, ".lock"), "w") as f:
            json.dump({"host": os.uname().nodename, "pid": 2**22 + 17, "started": "earlier"}, f)
        p = train("--train-iters", "1", "--save", save)
        ok = p.returncode == 0 and "stale lock" in p.stdout + p.stderr
        return ("GOOD", "taken over with a log line") if ok else ("POOR", f"exit {p.returncode}")

    def lr_inf(self) -> Result:
        return refused(train("--train-iters", "1", "--lr", "inf"), "--lr", code=2)

    def diverging_lr(self) -> Result:
        save = os.path.join(self.tmp, "ckpt")
        p = train("--train-iters", "20", "--lr", "1e30", "--save", save, "--save-interval", "1")
        steps = [e for e in os.listdir(save) if e.startswith("global_step")] if os.path.isdir(save) else []
        if p.returncode == 0:
            return "BAD", "a diverged run reported success"
        if len(steps) > 1:
            return "BAD", f"saved {steps} while diverging"
        return refused(p, "--max-nonfinite-steps")

    def sigterm_exit_code(self) -> Result:
        save = os.path.join(self.tmp, "ckpt")
        proc = subprocess.Popen([PY, "-W", "ignore", "pretrain_gpt.py", *TINY, "--mock-data", "--vocab-size", "64",
                                 "--train-iters", "100000", "--save", save], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if "iter      2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        proc.communicate(timeout=300)
        return ("GOOD", "exit 75, saved") if proc.returncode == 75 and os.path.exists(
            os.path.join(save, "latest")) else ("POOR", f"exit {proc.returncode}")

    def submit_newline(self) -> Result:
        out = os.path.join(self.tmp, "job.sh")
        p = run("tools/submit.py", "--scheduler", "pbs", "--nodes", "1", "--walltime", "01:00:00", "--save",
                "/c", "--name", "x\ntouch /tmp/pwned", "--output", out)
        if os.path.exists(out):
            return "BAD", "a job script with an injected line was written"
        return refused(p, "--name")

    def plan_duplicate_key(self) -> Result:
        plan = os.path.join(self.tmp, "plan.yaml")
        with open(plan, "w") as f:
            f.write(f"name: r\noutput_dir: {self.tmp}\ntrain_iters_per_stage: 4\nstages: []\ntrain_iters_per_stage: 9\n")
        return refused(run("tools/continual_run.py", "--plan", plan, "--dry-run"), "given twice")

    # ---- data ------------------------------------------------------------------------------

    def short_bin(self) -> Result:
        prefix = self._prefix()
        with open(prefix + ".bin", "r+b") as f:
            f.truncate(os.path.getsize(prefix + ".bin") - 20)
        return refused(self._dry(), "plays.bin")

    def truncated_idx(self) -> Result:
        prefix = self._prefix()
        with open(prefix + ".idx", "r+b") as f:
            f.truncate(os.path.getsize(prefix + ".idx") - 8)
        return refused(self._dry(), "plays.idx")

    def bad_magic(self) -> Result:
        prefix = self._prefix()
        with open(prefix + ".idx", "r+b") as f:
            f.write(b"XXXXXXXXX")
        return refused(self._dry(), "plays.idx")

    def empty_dataset(self) -> Result:
        from megatron.data.indexed import IndexedWriter

        prefix = self._prefix()
        with IndexedWriter(prefix, 258):
            pass
        return refused(self._dry(), "plays.idx", "empty")

    def ids_beyond_vocabulary(self) -> Result:
        import numpy as np

        from megatron.data.indexed import IndexedWriter

        prefix = self._prefix()
        with IndexedWriter(prefix, 70000) as w:
            for k in range(40):
                w.add_document(np.arange(64) + 1000 * (k % 2))
        return refused(self._dry(), "plays.bin", "vocabulary")

    def other_tokenizer_sidecar(self) -> Result:
        prefix = self._prefix()
        with open(prefix + "_meta.json", "w") as f:
            json.dump({"tokenizer": {"type": "gpt2", "files": ["vocab.json"], "sha256": ["0" * 64],
                                     "vocab_size": 50257}}, f)
        return refused(self._dry(), "plays_meta.json", "gpt2", "byte")

    def disk_full(self) -> Result:
        import errno

        import megatron.checkpointing.checkpoint as checkpoint

        real = checkpoint._write_atomic

        def full(path: str, text: str) -> None:  # the disk fills while step 2 is saved
            if "run_metadata" in path and "global_step2" in path:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            real(path, text)

        save = os.path.join(self.tmp, "ckpt")
        checkpoint._write_atomic = full
        try:
            p = train("--train-iters", "2", "--save", save, "--save-interval", "1")
        finally:
            checkpoint._write_atomic = real
        if os.path.exists(os.path.join(save, "global_step2")):
            return "BAD", "a partial step directory stayed"
        return refused(p, "full", save)

    def kill9_loop(self, kills: int = 30, seed: int = 0, *extra: str) -> Result:
        """``kills`` kill -9s at random moments of save-every-step training; nothing lost."""
        import torch

        rng = random.Random(seed)
        iters = str(max(12, 3 * kills))
        flags = ["--train-iters", iters, "--save-interval", "1", "--lr-decay-style", "constant", *extra]
        ref = os.path.join(self.tmp, "ref")
        assert train(*flags, "--save", ref).returncode == 0
        cut = os.path.join(self.tmp, "cut")
        args = [PY, "-W", "ignore", "pretrain_gpt.py", *TINY, "--mock-data", "--vocab-size", "64", *flags,
                "--save", cut, "--load", cut]
        done = killed = interrupted = 0
        for _ in range(kills):
            proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            started = None
            for line in proc.stdout:  # kill a random moment after training (and saving) began
                if "writing in the background" in line and rng.random() < 0.3:
                    break  # --async-save: the thread has just started writing
                if "] iter " in line or "saved checkpoint" in line:
                    started = started or time.monotonic()
                    if time.monotonic() - started > rng.uniform(0.0, 0.6):
                        break
            proc.kill()
            proc.communicate()
            done += 1
            killed += proc.returncode == -signal.SIGKILL  # not when it had already finished
            interrupted += any(not os.path.isfile(os.path.join(cut, d, "run_metadata.json"))
                               for d in os.listdir(cut) if d.startswith("global_step"))
            latest = os.path.join(cut, "latest")
            if os.path.exists(latest):
                with open(latest) as f:
                    tag = f.read().strip()
                if not os.path.isfile(os.path.join(cut, tag, "run_metadata.json")):
                    return "BAD", f"after kill {done}: latest names the uncommitted {tag}"
        final = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
        if final.returncode != 0:
            return "BAD", f"the relaunch after {kills} kills failed: {final.stderr.strip()[-200:]}"
        a = torch.load(os.path.join(ref, f"global_step{iters}", "mp_rank_00_model_states.pt"), weights_only=False)
        b = torch.load(os.path.join(cut, f"global_step{iters}", "mp_rank_00_model_states.pt"), weights_only=False)
        same = all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
        note = (f"{killed} of {kills} launches killed by -9 mid-run ({interrupted} left an interrupted save behind), {iters} steps")
        if not same:
            return "BAD", f"{note}; weights differ"
        mismatched = loss_mismatches(ref, cut)  # every launch's losses equal the uninterrupted run's
        if mismatched:
            return "BAD", f"{note}; losses differ at iterations {mismatched[:5]}"
        return "GOOD", f"{note}; every resumed loss and the final weights bit-identical"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=30, help="kill -9s in the save-every-step loop (0: skip it)")
    p.add_argument("--async-kills", type=int, default=3,
                   help="kill -9s in the same loop with --async-save (0: skip it)")
    p.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = p.parse_args()
    os.chdir(ROOT)
    root = tempfile.mkdtemp(prefix="faults-")
    battery = Battery(make_data(root))
    cases: list[tuple[str, Callable[[], Result]]] = [
        (name, getattr(battery, name)) for name in vars(Battery)
        if not name.startswith("_") and callable(getattr(Battery, name)) and name != "kill9_loop"]
    if args.kills:
        cases.append(("kill9_loop", lambda: battery.kill9_loop(args.kills)))
    if args.async_kills:  # kills during background writes: `latest` must still name a complete step
        cases.append(("kill9_async_loop", lambda: battery.kill9_loop(args.async_kills, 1, "--async-save")))
    counts = {"GOOD": 0, "POOR": 0, "BAD": 0}
    for name, case in cases:
        if args.only and args.only not in name:
            continue
        battery.tmp = tempfile.mkdtemp(dir=root, prefix=name + "-")
        started = time.monotonic()
        try:
            grade, note = case()
        except Exception as e:  # noqa: BLE001  (a crash of the case itself is reported, not hidden)
            grade, note = "BAD", f"case crashed: {type(e).__name__}: {e}"[:200]
        counts[grade] += 1
        print(f"{grade:4s} {name:30s} {time.monotonic() - started:6.1f}s  {note}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"faults: GOOD {counts['GOOD']}  POOR {counts['POOR']}  BAD {counts['BAD']}  (of {sum(counts.values())})")
    return 1 if counts["BAD"] else 0


if __name__ == "__main__":
    sys.exit(main())
