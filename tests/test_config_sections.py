"""The typed ``data`` / ``train`` / ``infer`` config sections (lrm/training/defaults.py, lrm/diffusion/task.py,
lrm/pipeline.py): typos and wrong types fail naming the section and key, what a YAML file sets is merged over the
dataclass defaults and nothing else changes, and every shipped config and checkpoint config still loads."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from lrm.config import ConfigError, load_config
from lrm.diffusion.task import DiffusionDataConfig, DiffusionTrainConfig
from lrm.pipeline import InferConfig, Pipeline, infer_section
from lrm.preprocess import InputError
from lrm.training.defaults import (RUNNER_TRAIN_KEYS, DataConfig, RunnerTrainConfig, TrainConfig, apply_defaults,
                                   merge_section)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
CHECKPOINT_CONFIGS = sorted((ROOT / "checkpoints").glob("*/config.yaml"))


def _has_diffusers() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


#: the zero123 task's object (built by apply_defaults) needs its noise scheduler from the diffusion extra
needs_diffusers = pytest.mark.skipif(not _has_diffusers(), reason="the zero123 task needs diffusers (extra: diffusion)")


def _zero123(name: str) -> bool:
    return "zero123" in name


def _over(base: dict, given: dict) -> dict:
    """``base`` with ``given`` written over it key by key (nested dicts merged, everything else replaced)."""
    out = dict(base)
    for k, v in given.items():
        out[k] = _over(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _raw(path) -> dict:
    """A config file as plain YAML (following ``_base_``), independent of OmegaConf and the schemas."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    base = raw.pop("_base_", None)
    return _over(_raw(Path(path).parent / base), raw) if base else raw


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("override, where", [
    ("train.learning_rate=1", "'train' config section: train.learning_rate"),
    ("train.loss.rbg=1", "'train' config section: train.loss.rbg"),
    ("data.synthetic.num_objectz=2", "'data' config section: data.synthetic.num_objectz"),
    ("infer.mc_resolutoin=65", "'infer' config section: infer.mc_resolutoin"),
])
def test_a_typo_fails_naming_its_section_and_key(override, where):
    with pytest.raises(ConfigError, match="unknown key in the " + where.replace(".", r"\.")):
        apply_defaults(load_config("tiny", [override]))


@pytest.mark.parametrize("override, key", [
    ("train.max_steps=abc", "train.max_steps"), ("train.max_steps=1.5", "train.max_steps"),
    ("train.betas=fast", "train.betas"), ("data.synthetic.fixed_input_view=maybe", "data.synthetic.fixed_input_view"),
    ("train.deepspeed.zero_stage=two", "train.deepspeed.zero_stage"), ("data.image_size=[64]", "data.image_size"),
])
def test_a_wrong_type_fails_with_one_clear_line(override, key):
    with pytest.raises(ConfigError) as e:
        apply_defaults(load_config("tiny", [override]))
    msg = str(e.value)
    assert "\n" not in msg and f"for {key}:" in msg and "invalid value" in msg, msg


@needs_diffusers
def test_the_diffusion_task_sections_are_typed_too():
    with pytest.raises(ConfigError, match=r"train\.sample_stepz"):
        apply_defaults(load_config("zero123-tiny", ["train.sample_stepz=3"]))
    with pytest.raises(ConfigError, match=r"train\.val_seed"):
        apply_defaults(load_config("zero123-tiny", ["train.val_seed=abc"]))


def test_integer_valued_floats_are_integers_and_floats_take_ints():
    cfg = apply_defaults(load_config("tiny", ["train.max_steps=1e3", "train.val_resolution=32.0", "train.lr=1",
                                              "data.synthetic.elevation_range=[0,30]"]))
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.val_resolution == 32 and isinstance(cfg.train.val_resolution, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert list(cfg.data.synthetic.elevation_range) == [0.0, 30.0]


def test_keys_of_several_forms_take_each_form():
    for views in ("2", "[1,4]"):
        for bg in ("white", "[0.1,0.2,0.3]"):
            cfg = apply_defaults(load_config("tiny", [f"data.num_input_views={views}", f"data.background={bg}",
                                                      "data.input_background=null", "data.val_path=elsewhere"]))
            assert _plain(cfg.data.num_input_views) == yaml.safe_load(views)
            assert _plain(cfg.data.background) == yaml.safe_load(bg)
            assert cfg.data.input_background is None and cfg.data.val_path == "elsewhere"


def test_infer_section_errors_are_input_errors_naming_the_key():
    with pytest.raises(InputError, match=r"unknown key in the 'infer' config section: infer\.mc_res\b"):
        infer_section({"mc_res": 65})
    with pytest.raises(InputError, match=r"infer\.mc_resolution must be an integer in \[8, 513\]"):
        infer_section({"mc_resolution": "abc"})
    with pytest.raises(InputError, match=r"infer\.input_background"):
        infer_section({"input_background": "grey"})
    with pytest.raises(InputError, match=r"infer\.texture must be vertex or uv"):
        infer_section({"texture": "pbr"})
    assert infer_section({"mc_resolution": 65.0})["mc_resolution"] == 65  # as the range check accepts


def test_a_merged_section_is_a_plain_dictconfig():
    """Callers read and assign ``cfg.train.*`` as before: no schema left attached, new keys may be added."""
    from omegaconf import DictConfig, OmegaConf

    cfg = apply_defaults(load_config("tiny"))
    assert isinstance(cfg.train, DictConfig) and OmegaConf.get_type(cfg.train) is dict
    cfg.train.max_steps = 2.0  # a typed node would refuse this
    cfg.train.extra = 1


def test_merge_section_still_takes_a_dict_of_defaults():
    cfg = load_config(None, ["task=linreg", "data.corrupt_every=3"])
    merge_section(cfg, "data", {"corrupt_every": 0, "kind": "x"})
    assert _plain(cfg.data) == {"corrupt_every": 3, "kind": "x"}
    with pytest.raises(ConfigError, match=r"'data' config section: data\.nope"):
        merge_section(load_config(None, ["data.nope=1"]), "data", {"corrupt_every": 0})


# ------------------------------------------------------------------------------------------------ defaults
def test_a_config_that_sets_nothing_gets_exactly_the_dataclass_defaults():
    cfg = apply_defaults(load_config())
    assert _plain(cfg.data) == dataclasses.asdict(DataConfig())
    assert _plain(cfg.train) == dataclasses.asdict(TrainConfig())
    assert infer_section(cfg.infer) == dataclasses.asdict(InferConfig())


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_diffusers) if _zero123(n) else n for n in CONFIGS])
def test_every_shipped_config_is_its_yaml_over_the_defaults(name):
    """Merged section == dataclass defaults with what the YAML file sets written over them (read as plain YAML)."""
    raw = _raw(ROOT / "configs" / f"{name}.yaml")
    cfg = apply_defaults(load_config(name))
    zero123 = raw.get("task") == "zero123"
    data, train = (DiffusionDataConfig, DiffusionTrainConfig) if zero123 else (DataConfig, TrainConfig)
    assert _plain(cfg.data) == _over(dataclasses.asdict(data()), raw.get("data") or {})
    assert _plain(cfg.train) == _over(dataclasses.asdict(train()), raw.get("train") or {})
    if not zero123:
        assert infer_section(cfg.infer) == _over(dataclasses.asdict(InferConfig()), raw.get("infer") or {})


def test_runner_keys_are_the_base_of_every_task_train_schema():
    names = lambda cls: [f.name for f in dataclasses.fields(cls)]  # noqa: E731
    assert tuple(names(RunnerTrainConfig)) == RUNNER_TRAIN_KEYS
    for cls in (TrainConfig, DiffusionTrainConfig):
        assert names(cls)[:len(RUNNER_TRAIN_KEYS)] == list(RUNNER_TRAIN_KEYS)
    # a task that sets no train keys (tests/test_runner.py's linreg) gets the runner's defaults and nothing else
    from lrm.training import tasks
    from lrm.training.task import Task

    tasks.register_task("no_train_keys", Task)
    try:
        cfg = apply_defaults(load_config(None, ["task=no_train_keys"]))
    finally:
        tasks.TASKS.pop("no_train_keys")
    assert _plain(cfg.train) == dataclasses.asdict(RunnerTrainConfig())


@pytest.mark.parametrize("path", [pytest.param(p, marks=needs_diffusers) if _zero123(p.parent.name) else p
                                  for p in CHECKPOINT_CONFIGS], ids=lambda p: p.parent.name)
def test_every_shipped_checkpoint_config_loads(path):
    """For inference (its infer section over InferConfig) and as a training config (train.py --config it)."""
    raw = _raw(path)
    cfg = load_config(path)
    if raw.get("task", "lrm") == "lrm":
        assert infer_section(cfg.get("infer")) == _over(dataclasses.asdict(InferConfig()), raw.get("infer") or {})
    merged = apply_defaults(cfg)
    assert _plain(merged.train) == _over(_plain(merged.train), raw["train"])  # what it saved is what it gets


def test_pipeline_options_are_the_section_then_the_call():
    class Model:
        def eval(self):
            return self

    cfg = load_config("tiny", ["infer.mc_threshold=8"])
    pipe = Pipeline(Model(), cfg, mc_resolution=33)
    want = dict(dataclasses.asdict(InferConfig()), foreground_ratio=0.7, mc_threshold=8.0, mc_resolution=33)
    assert pipe.opts == want
    with pytest.raises(InputError, match="unknown pipeline options"):
        Pipeline(Model(), cfg, mc_resolutoin=33)
