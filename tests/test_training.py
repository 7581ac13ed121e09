"""Fine-tuning with compression in the loop: the grouped training forward, gradients, checkpoints,
the adapter it writes, and `freqkv finetune`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from reference_freqkv import ReferenceFreqKV
from safetensors.torch import load_file
from tinymodel import save_tiny_model

from freqkv_cli.cache.policy import CachePolicy
from freqkv_cli.cli.app import run
from freqkv_cli.engine.streaming import StreamingEngine
from freqkv_cli.errors import EXIT_MODEL, EXIT_USAGE, ModelError, UsageError
from freqkv_cli.models.loading import load_model
from freqkv_cli.training import grouped_attention
from freqkv_cli.training.corpus import TokenCorpus
from freqkv_cli.training.finetune import FinetuneConfig, Finetuner

SAMPLES = Path(__file__).parent.parent / "samples"
POLICIES = [
    CachePolicy("freqkv", 32, 4, 0, 0.5),
    CachePolicy("freqkv", 32, 0, 6, 0.4),
    CachePolicy("sink", 32, 4, 5, 0.5),
    # The hybrid with random spans: the training schedule and the cache draw the same plan.
    CachePolicy("hybrid", 32, 4, 4, 0.5, exact=0.25, selector="random", seed=5),
    CachePolicy("hybrid", 40, 2, 0, 0.5, exact=0.3, selector="random", seed=7),
]


def grouped_logits(model: torch.nn.Module, ids: torch.Tensor, policy: CachePolicy) -> torch.Tensor:
    """``(T, vocab)`` logits of one ``(T,)`` sequence through the grouped training forward."""
    grouped_attention.register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(grouped_attention.ATTENTION_NAME)
    try:
        schedule = grouped_attention.GroupSchedule.build(policy, model.model.rotary_emb, len(ids))
        return model(
            input_ids=ids[None], position_ids=schedule.positions[None], freqkv_schedule=schedule
        ).logits[0]
    finally:
        model.set_attn_implementation(previous)


def grouped_nll(model: torch.nn.Module, ids: torch.Tensor, policy: CachePolicy) -> torch.Tensor:
    """Per-token NLL of one ``(T,)`` sequence through the grouped training forward."""
    logits = grouped_logits(model, ids, policy)[:-1]
    return -torch.log_softmax(logits.float(), -1).gather(-1, ids[1:, None])[:, 0]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.kind}-S{p.sink}-R{p.recent}")
def test_grouped_forward_equals_the_streaming_engine(family: str, policy: CachePolicy) -> None:
    model = tiny_model(family)
    ids = torch.randint(0, 211, (150,), generator=torch.Generator().manual_seed(3))
    streamed = StreamingEngine(model, policy, max_chunk=7).score(ids.tolist())
    with torch.no_grad():
        grouped = grouped_nll(model, ids, policy)
    assert streamed.shape == grouped.shape
    torch.testing.assert_close(grouped, streamed, atol=2e-5, rtol=1e-5)


def test_grouped_forward_equals_the_independent_reference() -> None:
    """The reference keeps keys before RoPE and compresses the un-rotated cache (no rotate/shift)."""
    model = tiny_model("llama")
    policy = CachePolicy("freqkv", 40, 4, 0, 0.5)
    ids = torch.randint(0, 211, (170,), generator=torch.Generator().manual_seed(5))
    reference = ReferenceFreqKV(model, policy.window, policy.sink, policy.recent, policy.ratio).run(
        ids.tolist()
    )
    want = -torch.log_softmax(reference[:-1], -1).gather(-1, ids[1:, None])[:, 0]
    with torch.no_grad():
        got = grouped_nll(model, ids, policy)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_schedule_positions_stay_inside_the_window() -> None:
    model = tiny_model("llama")
    policy = CachePolicy("freqkv", 64, 4, 8, 0.5)
    schedule = grouped_attention.GroupSchedule.build(policy, model.model.rotary_emb, 1000)
    assert int(schedule.positions.max()) == policy.window - 1
    assert schedule.groups[0] == (0, 64)
    sizes = {end - start for start, end in schedule.groups[1:-1]}
    assert sizes == {policy.freed()}
    assert schedule.groups[-1][1] == 1000


@pytest.mark.parametrize("kind", ["freqkv", "sink"])
def test_gradients_reach_old_tokens_only_through_compression(kind: str) -> None:
    """The loss of the last group depends on the first tokens only via compressed (freqkv) entries;
    sink truncation evicted them, so their gradient is exactly zero there."""
    model = tiny_model("llama")
    policy = CachePolicy(kind, 32, 2, 0, 0.5)
    length = 120
    ids = torch.randint(0, 211, (length,), generator=torch.Generator().manual_seed(7))
    grouped_attention.register()
    model.set_attn_implementation(grouped_attention.ATTENTION_NAME)
    schedule = grouped_attention.GroupSchedule.build(policy, model.model.rotary_emb, length)
    embeds = model.model.embed_tokens(ids[None]).detach().requires_grad_(True)
    logits = model(
        inputs_embeds=embeds, position_ids=schedule.positions[None], freqkv_schedule=schedule
    ).logits
    start, end = schedule.groups[-1]
    logits[0, start:end].float().logsumexp(-1).sum().backward()
    old = embeds.grad[0, policy.sink : policy.sink + 10].abs().sum()  # after the sinks, evicted early
    if kind == "freqkv":
        assert old > 0
    else:
        assert old == 0
    assert embeds.grad[0, :2].abs().sum() > 0  # the sinks are always seen


def test_engine_first_then_training_in_one_process() -> None:
    """Cached DCT tables made under inference_mode must not poison autograd later."""
    model = tiny_model("llama")
    policy = CachePolicy("freqkv", 32, 4, 0, 0.5)
    ids = torch.randint(0, 211, (100,), generator=torch.Generator().manual_seed(1))
    StreamingEngine(model, policy).score(ids.tolist())  # builds the tables in inference mode
    model.lm_head.weight.requires_grad_(True)
    grouped_nll(model, ids, policy).mean().backward()
    assert model.lm_head.weight.grad is not None


# -- the trainer ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("base") / "model")


def make_trainer(base: Path, out: Path, steps: int = 6, **changes: object) -> Finetuner:
    loaded = load_model(str(base), device="cpu", dtype="float32")
    corpus = TokenCorpus.from_files(
        [SAMPLES / "botchan.txt"], loaded.tokenizer, loaded.tokenizer.eos_token_id
    )
    settings = dict(
        policy=CachePolicy("freqkv", 48, 4, 8, 0.5), seq_len=160, steps=steps, lr=3e-3, warmup=2,
        batch=2, micro_batch=1, lora_r=4, lora_alpha=8, save_every=3,
    )  # fmt: skip
    settings.update(changes)
    return Finetuner(loaded, str(base), FinetuneConfig(**settings), corpus, out)


def test_training_lowers_the_loss_on_held_fixed_batch(base: Path, tmp_path: Path) -> None:
    trainer = make_trainer(base, tmp_path / "out", steps=25, lr=1e-2)
    batch = trainer.corpus.batch(10_000, 2, 160, seed=99)  # not a training batch
    with torch.no_grad():
        before = trainer.loss(batch)[0].item()
    trainer.run()
    with torch.no_grad():
        after = trainer.loss(batch)[0].item()
    assert after < before * 0.97  # measured: -6% in 25 steps; broken gradients leave it unchanged


def test_hybrid_training_draws_new_spans_each_step_and_learns(base: Path, tmp_path: Path) -> None:
    policy = CachePolicy("hybrid", 48, 4, 8, 0.5, exact=0.25)
    trainer = make_trainer(base, tmp_path / "out", steps=25, lr=1e-2, policy=policy)
    batch = trainer.corpus.batch(10_000, 2, 160, seed=99)
    with torch.no_grad():
        before = trainer.loss(batch)[0].item()
    plans = trainer.schedule.plans
    trainer.step = 1
    with torch.no_grad():
        trainer.loss(batch)
    assert plans and not torch.equal(plans[0].exact_from, trainer.schedule.plans[0].exact_from)
    trainer.step = 0
    trainer.run()
    with torch.no_grad():
        after = trainer.loss(batch)[0].item()
    assert after < before * 0.97


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(base: Path, tmp_path: Path) -> None:
    straight = make_trainer(base, tmp_path / "a", steps=6)
    straight.run()
    first = make_trainer(base, tmp_path / "b", steps=6)
    first.run(should_stop=lambda: first.step == 3)  # "Ctrl-C" after step 3
    assert not (tmp_path / "b" / "adapter_config.json").exists()
    second = make_trainer(base, tmp_path / "b", steps=6)
    result = second.run(resume=True)
    assert result.resumed_from == 3
    assert second.losses == pytest.approx(straight.losses, rel=1e-5)
    want = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5)


def test_resume_with_other_settings_is_refused(base: Path, tmp_path: Path) -> None:
    first = make_trainer(base, tmp_path / "out", steps=4)
    first.run(should_stop=lambda: first.step == 3)
    with pytest.raises(UsageError, match=r"other settings \(lr 0.003 there, 0.001 here\)"):
        make_trainer(base, tmp_path / "out", steps=4, lr=1e-3).run(resume=True)


def test_a_checkpoint_from_before_a_setting_existed_resumes(base: Path, tmp_path: Path) -> None:
    """``quantize`` joined a run's identity later: a checkpoint without it is an unquantized run's."""
    first = make_trainer(base, tmp_path / "out", steps=4)
    first.run(should_stop=lambda: first.step == 3)
    state_file = tmp_path / "out" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["quantize"]
    state_file.write_text(json.dumps(state))
    assert make_trainer(base, tmp_path / "out", steps=4).run(resume=True).resumed_from == 3


def test_written_adapter_loads_and_streams_like_the_trained_model(base: Path, tmp_path: Path) -> None:
    trainer = make_trainer(base, tmp_path / "out", steps=6)
    trainer.run()
    sequence = trainer.corpus.batch(5_000, 1, 160, seed=1)
    trainer.model.eval()
    with torch.no_grad():
        loss_sum, count = trainer.loss(sequence)
    settings = json.loads((tmp_path / "out" / "freqkv.json").read_text())
    assert settings["window"] == 48 and settings["recent"] == 8 and settings["seq_len"] == 160
    assert settings["base_model"] == str(base) and len(settings["base_fingerprint"]) == 16
    assert settings["data"][0]["file"] == "botchan.txt"
    loaded = load_model(str(tmp_path / "out"), device="cpu")
    assert loaded.settings is not None and loaded.settings.recent == 8
    policy = CachePolicy("freqkv", 48, 4, 8, 0.5)
    streamed = StreamingEngine(loaded.model, policy, max_chunk=16).score(sequence[0].tolist())
    assert streamed.sum().item() == pytest.approx(loss_sum.item(), rel=1e-4)
    assert len(streamed) == count
    untrained = load_model(str(base), device="cpu")
    other = StreamingEngine(untrained.model, policy).score(sequence[0].tolist())
    assert abs(other.sum().item() - loss_sum.item()) > 1e-3 * loss_sum.item()


def test_adapter_on_the_wrong_base_is_refused(base: Path, tmp_path: Path) -> None:
    make_trainer(base, tmp_path / "out", steps=3).run()
    other = save_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(ModelError, match="another base model"):
        load_model(str(tmp_path / "out"), base=str(other), device="cpu")


# -- the command ------------------------------------------------------------------------------------
def finetune_args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--model", str(base), "--data", str(SAMPLES / "botchan.txt"), "--out", str(out),
        "--window", "48", "--recent", "8", "--seq-len", "160", "--steps", "3", "--batch", "2",
        "--lora-r", "4", "--quiet", "--json", *extra,
    ]  # fmt: skip


def test_finetune_command_writes_an_adapter_that_eval_loads(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "adapter"
    assert run(finetune_args(base, out)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 3 and report["complete"] and report["tokens"] == 3 * 2 * 160
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainable_params.safetensors",
        "freqkv.json",
    ):
        assert (out / name).is_file()
    text = tmp_path / "t.txt"
    text.write_text((SAMPLES / "botchan.txt").read_text()[:2000])
    assert run(["eval", "ppl", str(text), "--model", str(out), "--lengths", "300", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["window"] == 48 and data["recent"] == 8  # from the adapter's freqkv.json


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seq-len", "40"], "must exceed --window"),
        (["--lora-targets", "nope_proj"], "no module named 'nope_proj'"),
        (["--batch", "3", "--micro-batch", "2"], "multiple of --micro-batch"),
        (["--cache", "full"], "freqkv, sink or hybrid"),
        (["--ratio", "1.5"], "ratio"),
        (["--lr", "0"], "--lr"),
    ],
)
def test_finetune_bad_flags_are_usage_errors(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    assert run(finetune_args(base, tmp_path / "out", *extra)) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_finetune_refuses_a_non_empty_out_without_resume(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run(finetune_args(base, out)) == EXIT_USAGE
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_finetune_refuses_an_adapter_as_base(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    adapter = tmp_path / "adapter"
    assert run(finetune_args(base, adapter)) == 0
    capsys.readouterr()
    assert run(finetune_args(adapter, tmp_path / "again")) == EXIT_USAGE
    assert "fine-tune its base model" in capsys.readouterr().err


def test_finetune_on_a_missing_model_is_a_model_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(finetune_args(tmp_path / "nothing", tmp_path / "out")) == EXIT_MODEL


def test_distillation_loss_is_the_kl_to_the_full_cache_base(base: Path, tmp_path: Path) -> None:
    """At initialisation (LoRA B = 0) the student is the base reading a compressed cache."""
    trainer = make_trainer(base, tmp_path / "out", distill=1.0)
    sequence = trainer.corpus.batch(77, 1, 160, seed=3)
    with torch.no_grad():
        got, count = trainer.loss(sequence)
    plain = load_model(str(base), device="cpu").model
    with torch.no_grad():
        teacher = torch.log_softmax(plain(sequence).logits[0, :-1].float(), -1)
        student = torch.log_softmax(
            grouped_logits(plain, sequence[0], trainer.config.policy)[:-1].float(), -1
        )
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    assert count == 159 and student.shape[0] == 159
    assert got.item() == pytest.approx(kl.sum().item(), rel=1e-4)
    assert kl[: 48 - 1].abs().max() < 1e-5  # the first window is exact: nothing to learn there
    assert kl[48:].sum() > 0.01


def test_distillation_beyond_the_native_window_is_refused(base: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="within the model's window"):
        make_trainer(base, tmp_path / "out", distill=0.5, seq_len=5000)
