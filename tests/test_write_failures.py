"""Weights and checkpoints that cannot be written (a full disk, a file-size quota) fail in one
clear line and leave no half-written folder. The failure is real: the writers run under
RLIMIT_FSIZE in a child process, so safetensors' and torch's own writers hit the limit, as they
hit ENOSPC on a full disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

# Run in a child: the limit (and ignoring SIGXFSZ, so that a write fails instead of killing the
# process) must not reach the test runner.
CHILD = """
import json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tinymodel import byte_tokenizer, tiny_model
from freqkv_cli.models import loading, quantize
from freqkv_cli.errors import ModelError
tokenizer = byte_tokenizer()
model = tiny_model("llama", vocab_size=len(tokenizer))
home = Path(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the weights are ~1 MB
result = {}
try:
    loading._save_atomically(model, tokenizer, home / "models" / "converted")
    result["converted"] = "written"
except ModelError as exc:
    result["converted"] = str(exc)
result["quantized_kept"] = quantize.save_prequantized(model, tokenizer, home / "quantized" / "copy")
import torch
from freqkv_cli.errors import OutputError
from freqkv_cli.training import checkpoints
def write(staging):
    checkpoints.save_optimizer({"state": {0: {"exp_avg": torch.zeros(100_000)}}}, staging / "optimizer.pt")
try:
    checkpoints.save(home / "run", write, {"step": 3})
    result["checkpoint"] = "written"
except OutputError as exc:
    result["checkpoint"] = str(exc)
print(json.dumps(result))
"""


def test_weights_that_cannot_be_written_fail_in_one_line_and_leave_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(TESTS), str(home)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    message, target = result["converted"], home / "models" / "converted"
    assert message.startswith(f"cannot write the converted default model to '{target}'")
    assert "File too large" in message and "free some space" in message
    assert "\n" not in message
    assert result["quantized_kept"] is False
    assert "could not keep the quantized copy" in done.stderr
    # A training checkpoint: torch's own writer fails with a RuntimeError, reported as the rest.
    checkpoint = result["checkpoint"]
    assert checkpoint.startswith(f"cannot write the checkpoint of step 3 in '{home / 'run'}'"), checkpoint
    assert "torch could not write optimizer.pt" in checkpoint and "\n" not in checkpoint
    # Neither the folders nor their staging copies are left behind.
    assert sorted(p.name for p in (home / "models").iterdir()) == []
    assert sorted(p.name for p in (home / "quantized").iterdir()) == []
    assert sorted(p.name for p in (home / "run").iterdir()) == []
