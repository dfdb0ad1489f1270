import dataclasses
import json

import pytest

from pgolf.config import LEGACY_ENV, ConfigError, RunConfig, config_hash, diff, flatten, from_dict, known_keys, to_dict
from pgolf.presets import PRESETS, get_preset, resolve
from pgolf.tools.cli import main


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_validate(name):
    cfg = get_preset(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.preset == name
    assert cfg.train.batch_tokens % cfg.train.seq_len == 0
    assert from_dict(to_dict(cfg)) == cfg


def test_record_preset_is_the_v20_stack():
    c = get_preset("record")
    m = c.model
    assert (m.vocab_size, m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads) == (1024, 11, 512, 8, 4)
    assert (m.mlp_mult, m.mlp_activation, m.leaky_slope) == (3.0, "leaky_relu2", 0.5)
    assert (m.rope_base, m.rope_dims, m.rope_ref_len, m.logit_softcap) == (10000.0, 16, 1024, 30.0)
    assert (m.qk_gain_init, m.xsa_last_n) == (5.0, 11)
    assert (m.bigram_buckets, m.bigram_dim) == (3072, 112)
    assert (m.ve_dim, m.ve_layers) == (128, (9, 10))
    assert m.tie_embeddings and m.smear_gate and m.unet_skips and m.resid_mix and m.ln_scale and m.qk_norm
    t = c.train
    assert (t.seq_len, t.batch_tokens, t.max_wallclock_seconds, t.warmdown_iters) == (2048, 786_432, 600.0, 4000)
    assert (t.ema_decay, t.grad_clip_norm, t.warmup_steps, t.iterations) == (0.997, 0.3, 20, 20_000)
    o = c.optim
    assert (o.matrix_lr, o.scalar_lr, o.tied_embed_lr, o.muon_wd, o.adam_wd) == (0.025, 0.025, 0.035, 0.04, 0.04)
    assert (o.muon_momentum, o.muon_momentum_warmup_start, o.muon_momentum_warmup_steps) == (0.99, 0.92, 1500)
    assert (c.score.seq_len, c.score.sliding.stride) == (2048, 64)
    assert c.score.slot.coupling == "per_window" and c.score.ttt.mode == "score_first"
    assert c.budget.artifact_bytes_limit == 16_000_000
    assert c.quant.prune_target_bytes == 15_990_000


def test_config_is_frozen():
    c = get_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.model.num_layers = 3  # type: ignore[misc]


def test_set_env_and_legacy_precedence():
    env = {"NUM_LAYERS": "3", "PGOLF_MODEL__NUM_LAYERS": "4", "SEED": "42", "PGOLF_TRAIN__ITERATIONS": "9"}
    cfg, applied = resolve("tiny", ["model.num_layers=5"], env)
    assert cfg.model.num_layers == 5  # --set beats PGOLF_ beats legacy
    assert cfg.seed == 42 and cfg.train.iterations == 9
    assert [o.source for o in applied if o.key == "model.num_layers"] == [
        "env NUM_LAYERS", "env PGOLF_MODEL__NUM_LAYERS", "--set model.num_layers"]
    cfg, _ = resolve("tiny", [], {"NUM_LAYERS": "3"})
    assert cfg.model.num_layers == 3
    cfg, _ = resolve("tiny", [], {}, seed=7)
    assert cfg.seed == 7


def test_nested_keys_tuples_bools_literals():
    cfg, _ = resolve("record", ["score.slot.coupling=shared", "model.ve_layers=8,9,10", "train.ema_decay=0",
                                "model.smear_gate=0", "score.modes=sliding,slot", "quant.compressor=brotli",
                                "model.ve_layers=", "score.slot.phase_iters=25", "score.slot.phase_history=20",
                                "score.slot.phase_alpha=0"], {})
    assert cfg.score.slot.coupling == "shared"
    assert cfg.model.ve_layers == ()
    assert cfg.train.ema_decay == 0.0 and cfg.model.smear_gate is False
    assert cfg.score.modes == ("sliding", "slot") and cfg.quant.compressor == "brotli"
    assert cfg.score.slot.phase_iters == (25,)
    env = {"PGOLF_SCORE__TTT__MODE": "prequant", "TTT_LR": "0.005", "TIE_EMBEDDINGS": "0"}
    cfg, _ = resolve("record", [], env)
    assert cfg.score.ttt.mode == "prequant" and cfg.score.ttt.lr == 0.005 and cfg.model.tie_embeddings is False


@pytest.mark.parametrize("sets,env,needle", [
    (["model.num_layer=3"], {}, "unknown config key 'model.num_layer' (from --set model.num_layer)"),
    ([], {"PGOLF_MODEL__NUM_LAYER": "3"}, "unknown config key 'model.num_layer' (from env PGOLF_MODEL__NUM_LAYER)"),
    ([], {"PGOLF_BOGUS": "1"}, "unknown config key 'bogus' (from env PGOLF_BOGUS)"),
    (["train.iterations=ten"], {}, "train.iterations: cannot use 'ten' (from --set train.iterations): expected int"),
    (["model.smear_gate=maybe"], {}, "model.smear_gate: cannot use 'maybe'"),
    (["score.slot.coupling=batch"], {}, "score.slot.coupling: cannot use 'batch'"),
    ([], {"NUM_LAYERS": "x"}, "model.num_layers: cannot use 'x' (from env NUM_LAYERS)"),
    (["train.iterations=1.5"], {}, "expected int"),
    (["noequals"], {}, "expected section.key=value"),
])
def test_bad_overrides_name_the_key(sets, env, needle):
    with pytest.raises(ConfigError) as ei:
        resolve("tiny", sets, env)
    assert needle in str(ei.value)


def test_unknown_key_suggests_neighbours():
    with pytest.raises(ConfigError, match="did you mean model.num_layers"):
        resolve("tiny", ["model.num_layer=3"], {})


@pytest.mark.parametrize("sets,needle", [
    (["model.num_heads=3"], "model.model_dim: 64 is not divisible by model.num_heads=3"),
    (["model.num_kv_heads=3"], "model.num_kv_heads"),
    (["train.batch_tokens=500"], "train.batch_tokens: 500 is not a multiple of train.seq_len=64"),
    (["score.sliding.stride=65"], "score.sliding.stride: 65 exceeds score.seq_len=64"),
    (["model.ve_layers=5"], "model.ve_layers"),
    (["score.modes=sliding,magic"], "score.modes: unknown mode"),
    (["model.vocab_size=70000"], "model.vocab_size"),
    (["score.slot.phase_iters=1,2,3"], "score.slot.phase_history"),
])
def test_cross_field_validation(sets, needle):
    with pytest.raises(ConfigError) as ei:
        resolve("tiny", sets, {})
    assert needle in str(ei.value)


def test_later_override_can_fix_an_earlier_invalid_intermediate():
    # seq_len 128 alone breaks batch_tokens=512? no: 512 % 128 == 0; use a pair that is only valid together
    cfg, _ = resolve("tiny", ["train.seq_len=100", "train.batch_tokens=800"], {})
    assert (cfg.train.seq_len, cfg.train.batch_tokens) == (100, 800)


def test_hash_and_diff():
    a = get_preset("tiny")
    b, _ = resolve("tiny", ["train.iterations=21"], {})
    assert config_hash(a) == config_hash(get_preset("tiny"))
    assert config_hash(a) != config_hash(b)
    c, _ = resolve("tiny", ["run_id=abc"], {})
    assert config_hash(a) == config_hash(c)  # run_id is a label
    assert diff(b, a) == {"train.iterations": (20, 21)}
    assert len(flatten(a)) == len(known_keys())


def test_every_legacy_name_maps_to_a_known_key():
    keys = known_keys()
    assert all(v in keys for v in LEGACY_ENV.values())
    for name in ("DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "SEED", "VOCAB_SIZE", "MAX_WALLCLOCK_SECONDS",
                 "TRAIN_SEQ_LEN", "TRAIN_BATCH_TOKENS", "NUM_LAYERS", "MODEL_DIM"):
        assert name in LEGACY_ENV


def test_cli_config_show_and_diff(capsys, clean_env):
    assert main(["config", "show", "--preset", "record"]) == 0
    out = capsys.readouterr().out
    for line in ("num_layers = 11", "qk_gain_init = 5.0", "bigram_buckets = 3072", "bigram_dim = 112",
                 "xsa_last_n = 11", "ve_layers = 9,10", "rope_dims = 16"):
        assert line in out
    clean_env.setenv("PGOLF_TRAIN__ITERATIONS", "5")
    assert main(["config", "diff", "--preset", "tiny", "--set", "model.num_layers=3"]) == 0
    out = capsys.readouterr().out
    assert "model.num_layers: 2 -> 3   # --set model.num_layers" in out
    assert "train.iterations: 20 -> 5   # env PGOLF_TRAIN__ITERATIONS" in out
    assert main(["config", "show", "--preset", "tiny", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["config"]["model"]["num_layers"] == 2 and js["overrides"][0]["source"] == "env PGOLF_TRAIN__ITERATIONS"


def test_cli_unknown_key_is_one_line(capsys, clean_env):
    assert main(["config", "show", "--preset", "tiny", "--set", "model.foo=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'model.foo'" in err and "Traceback" not in err
    clean_env.setenv("PGOLF_MODEL__FOO", "1")
    assert main(["config", "show", "--preset", "tiny"]) == 2
    assert "PGOLF_MODEL__FOO" in capsys.readouterr().err
    assert main(["config", "show", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
