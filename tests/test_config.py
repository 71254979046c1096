"""Config: shipped recipes, dotted overrides with type coercion, validation messages, save/load round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from dinolab import config as config_lib
from dinolab.config import Config, ConfigError

RECIPES = config_lib.available_recipes()


def test_shipped_recipes_are_listed() -> None:
    assert "dino_vit_tiny_fmnist" in RECIPES
    assert "dino_vits16_imagenet" in RECIPES
    assert sorted(RECIPES) == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_loads_and_validates(name: str) -> None:
    cfg = config_lib.load(name)
    assert isinstance(cfg, Config)
    config_lib.validate(cfg)  # idempotent: no exception
    assert cfg.data.global_crops_size % cfg.model.patch_size == 0
    assert len(cfg.data.mean) == len(cfg.data.std) == cfg.model.in_chans


def test_imagenet_recipe_matches_the_paper() -> None:
    cfg = config_lib.load("dino_vits16_imagenet")
    assert (cfg.model.arch, cfg.model.patch_size) == ("vit_small", 16)
    assert cfg.head.out_dim == 65536
    assert cfg.data.local_crops_number == 10
    assert (cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp) == (0.04, 0.07)
    assert cfg.optim.batch_size == 1024
    assert isinstance(cfg.data.global_crops_scale, tuple)


def test_recipe_by_yaml_path(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  arch: vit_small\noptim:\n  epochs: 17\n")
    cfg = config_lib.load(path)
    assert cfg.model.arch == "vit_small"
    assert cfg.optim.epochs == 17
    assert cfg.optim.batch_size == config_lib.OptimConfig().batch_size  # untouched keys keep defaults


def test_unknown_recipe_names_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="dino_vit_tiny_fmnist"):
        config_lib.load("no_such_recipe")


def test_overrides_apply_with_type_coercion() -> None:
    cfg = config_lib.load(
        "dino_vit_tiny_fmnist",
        [
            "optim.epochs=5",
            "optim.lr=0.002",
            "optim.warmup_epochs=1",  # int in YAML, float field
            "data.global_crops_scale=[0.3, 1]",
            "head.norm_last_layer=false",
            "train.output_dir=123",  # a number where a string is wanted
            "model.layerscale_init=0.1",
            "eval.knn_k=[1, 2]",
            "data.path=",  # empty value -> empty string
        ],
    )
    assert cfg.optim.epochs == 5 and type(cfg.optim.epochs) is int
    assert cfg.optim.lr == 0.002
    assert cfg.optim.warmup_epochs == 1.0 and type(cfg.optim.warmup_epochs) is float
    assert cfg.data.global_crops_scale == (0.3, 1.0)
    assert all(type(v) is float for v in cfg.data.global_crops_scale)
    assert cfg.head.norm_last_layer is False
    assert cfg.train.output_dir == "123"
    assert cfg.model.layerscale_init == 0.1
    assert cfg.eval.knn_k == (1, 2)
    assert cfg.data.path == ""


def test_override_to_none_for_optional_field() -> None:
    cfg = config_lib.load("dino_vit_tiny_fmnist", ["model.layerscale_init=0.5", "model.layerscale_init=null"])
    assert cfg.model.layerscale_init is None


@pytest.mark.parametrize(("override", "section", "key", "value"), [
    ("optim.lr=1e-3", "optim", "lr", 1e-3),
    ("model.layerscale_init=1e-5", "model", "layerscale_init", 1e-5),
])
def test_scientific_notation_without_dot_is_a_float(override: str, section: str, key: str, value: float) -> None:
    cfg = config_lib.load("dino_vit_tiny_fmnist", [override])
    assert getattr(getattr(cfg, section), key) == pytest.approx(value)


@pytest.mark.parametrize(
    ("override", "parts"),
    [
        ("optim.epochz=3", ("optim", "epochz")),
        ("model.patch=8", ("model", "patch")),
        ("optimz.lr=0.1", ("optimz",)),
    ],
)
def test_unknown_key_is_rejected_and_named(override: str, parts: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load("dino_vit_tiny_fmnist", [override])
    message = str(info.value)
    assert "unknown config key" in message
    for part in parts:
        assert part in message


def test_unknown_top_level_section_is_named_exactly() -> None:
    with pytest.raises(ConfigError, match="'optimz'"):
        config_lib.load("dino_vit_tiny_fmnist", ["optimz.lr=0.1"])


@pytest.mark.parametrize(("override", "key"), [("optim.epochz=3", "optim.epochz"), ("model.patch=8", "model.patch")])
def test_unknown_key_message_spells_the_dotted_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load("dino_vit_tiny_fmnist", [override])
    assert key in str(info.value)


def test_unknown_key_in_yaml_file_names_the_dotted_key(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  arch: vit_tiny\n  wdith: 3\n")
    with pytest.raises(ConfigError, match=r"model\.'?wdith"):
        config_lib.load(path)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optim.epochs=abc"], "optim.epochs"),
        (["optim.epochs=2.5"], "optim.epochs"),
        (["optim.epochs=true"], "optim.epochs"),  # a bool is not an int here
        (["optim.lr=fast"], "optim.lr"),
        (["model.in_chans=2"], "model.in_chans"),
        (["data.global_crops_size=30"], "data.global_crops_size"),  # patch size 7 in this recipe
        (["data.local_crops_number=4", "data.local_crops_size=15"], "data.local_crops_size"),  # the demo has none
        (["data.global_crops_scale=[0.5]"], "data.global_crops_scale"),
        (["data.global_crops_scale=[0.9, 0.5]"], "data.global_crops_scale"),
        (["data.global_crops_scale=0.5"], "data.global_crops_scale"),
        (["model.arch=vit_huge"], "model.arch"),
        (["model.ffn=gelu"], "model.ffn"),
        (["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.2, 0.2, 0.2]"], "data.mean/std"),
        (["data.std=[0.0]"], "data.std"),
        (["optim.warmup_epochs=5", "optim.epochs=2"], "optim.warmup_epochs"),
        (["optim.momentum_teacher=1.1"], "optim.momentum_teacher"),
        (["loss.center_momentum=1.0"], "loss.center_momentum"),
        (["train.precision=fp8"], "train.precision"),
        (["train.device=tpu"], "train.device"),
        (["eval.knn_k=[0, 10]"], "eval.knn_k"),
    ],
)
def test_bad_value_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_lib.load("dino_vit_tiny_fmnist", overrides)
    assert key in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("override", ["optim.epochs", "epochs=3", "=3"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        config_lib.load("dino_vit_tiny_fmnist", [override])


def test_override_into_an_empty_yaml_section(tmp_path) -> None:
    path = tmp_path / "empty_section.yaml"
    path.write_text("model:\n  arch: vit_tiny\neval:\n")
    assert config_lib.load(path).eval.knn_k == (10, 20, 100, 200)  # the empty section itself is fine
    assert config_lib.load(path, ["eval.knn_k=[5]"]).eval.knn_k == (5,)
    assert config_lib.load(path, ["eval.knn_k=20"]).eval.knn_k == (20,)  # one k needs no brackets


def test_override_with_too_many_dots_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        config_lib.load("dino_vit_tiny_fmnist", ["model.arch.size=3"])


def test_invalid_yaml_file(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        config_lib.load(path)


def test_yaml_that_is_not_a_mapping(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config_lib.load(path)


@pytest.mark.parametrize("name", RECIPES)
def test_save_load_round_trip(name: str, tmp_path) -> None:
    cfg = config_lib.load(name, ["optim.lr=0.00123", "model.layerscale_init=0.1", "eval.knn_k=[5]"])
    path = tmp_path / "config.yaml"
    config_lib.save(cfg, path)
    text = path.read_text()
    assert "!!python" not in text  # plain YAML, no tuple tags
    again = config_lib.load(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(text) == cfg.to_dict()


def test_to_dict_uses_lists_and_covers_every_field() -> None:
    d = Config().to_dict()
    assert isinstance(d["data"]["global_crops_scale"], list)
    assert set(d) == {f.name for f in dataclasses.fields(Config)}
    assert config_lib.from_dict(d) == config_lib.from_dict(Config().to_dict())


def test_defaults_are_valid() -> None:
    config_lib.validate(Config())
    assert config_lib.from_dict({}) == Config()


# ---------------------------------------------------------------- recipe inheritance (base:)


def write(path, text: str):
    path.write_text(text)
    return path


def test_inheritance_over_three_levels_with_overrides_last(tmp_path) -> None:
    root = "model:\n  arch: vit_small\n  depth: 2\noptim:\n  epochs: 9\n  warmup_epochs: 1\n  lr: 0.001\n"
    write(tmp_path / "root.yaml", root)
    write(tmp_path / "mid.yaml", "base: root.yaml\noptim:\n  epochs: 7\n")
    leaf = write(tmp_path / "leaf.yaml", "base: mid.yaml\noptim:\n  lr: 0.003\n")
    cfg = config_lib.load(leaf, ["optim.epochs=12"])
    assert (cfg.model.arch, cfg.model.depth) == ("vit_small", 2)  # a section only the root sets survives
    assert cfg.optim.lr == 0.003  # the child beats its bases key by key
    assert cfg.optim.epochs == 12  # overrides beat every file in the chain
    assert config_lib.load(leaf).optim.epochs == 7  # the nearer base beats the farther one
    assert [p.name for p in config_lib.recipe_chain(leaf)] == ["leaf.yaml", "mid.yaml", "root.yaml"]


def test_empty_child_section_keeps_the_base_section(tmp_path) -> None:
    write(tmp_path / "root.yaml", "eval:\n  knn_k: [5]\n")
    leaf = write(tmp_path / "leaf.yaml", "base: root.yaml\neval:\n")
    assert config_lib.load(leaf).eval.knn_k == (5,)


def test_child_null_beats_a_base_value(tmp_path) -> None:
    leaf = write(tmp_path / "leaf.yaml", "base: dinov2_vit_tiny_fmnist\nmodel:\n  layerscale_init: null\n")
    assert config_lib.load(leaf).model.layerscale_init is None


def test_base_by_relative_path_and_by_shipped_name(tmp_path) -> None:
    (tmp_path / "bases").mkdir()
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "bases" / "b.yaml", "base: dino_vit_tiny_fmnist\noptim:\n  epochs: 4\n")
    leaf = write(tmp_path / "recipes" / "leaf.yaml", "base: ../bases/b.yaml\ntrain:\n  seed: 3\n")
    cfg = config_lib.load(leaf)
    shipped = config_lib.load("dino_vit_tiny_fmnist")
    assert (cfg.optim.epochs, cfg.train.seed) == (4, 3)
    assert (cfg.model, cfg.data) == (shipped.model, shipped.data)
    assert config_lib.recipe_chain(leaf)[-1] == (config_lib.CONFIG_DIR / "dino_vit_tiny_fmnist.yaml").resolve()


def test_missing_base_names_the_file_that_names_it(tmp_path) -> None:
    leaf = write(tmp_path / "leaf.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as info:
        config_lib.load(leaf)
    message = str(info.value)
    assert "leaf.yaml" in message and "nowhere.yaml" in message and "dino_vit_tiny_fmnist" in message
    with pytest.raises(ConfigError, match="no_such_recipe"):
        config_lib.load(write(tmp_path / "named.yaml", "base: no_such_recipe\n"))


def test_inheritance_cycle_names_the_files(tmp_path) -> None:
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as info:
        config_lib.load(a)
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="cycle"):
        config_lib.recipe_chain(write(tmp_path / "self.yaml", "base: self.yaml\n"))


@pytest.mark.parametrize(("base_text", "match"), [("- 1\n- 2\n", "mapping"), ("model: [unclosed\n", "YAML")])
def test_base_that_is_not_a_mapping_names_both_files(tmp_path, base_text: str, match: str) -> None:
    write(tmp_path / "base.yaml", base_text)
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=match) as info:
        config_lib.load(leaf)
    assert "base.yaml" in str(info.value) and "leaf.yaml" in str(info.value)


@pytest.mark.parametrize("value", ["[a.yaml, b.yaml]", "''", "3"])
def test_base_must_be_one_name_or_path(tmp_path, value: str) -> None:
    with pytest.raises(ConfigError, match="base"):
        config_lib.load(write(tmp_path / "leaf.yaml", f"base: {value}\n"))


def test_unknown_key_in_a_base_names_the_key_and_the_file(tmp_path) -> None:
    write(tmp_path / "base.yaml", "model:\n  arch: vit_tiny\n  wdith: 3\n")
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\noptim:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"model\.'?wdith") as info:
        config_lib.load(leaf)
    assert "base.yaml" in str(info.value)


def test_merged_chain_is_validated_as_a_whole(tmp_path) -> None:
    # each file is fine alone; together warm-up outlasts the run
    write(tmp_path / "base.yaml", "optim:\n  epochs: 20\n  warmup_epochs: 10\n")
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\noptim:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match="optim.warmup_epochs"):
        config_lib.load(leaf)


def test_base_never_reaches_the_saved_config(tmp_path) -> None:
    cfg = config_lib.load("dinov2_distill_fmnist")
    assert "base" not in cfg.to_dict()
    config_lib.save(cfg, tmp_path / "config.yaml")
    assert "base" not in yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config_lib.recipe_chain(tmp_path / "config.yaml") == [(tmp_path / "config.yaml").resolve()]


@pytest.mark.parametrize("name", RECIPES)
def test_show_round_trips_and_names_the_chain(name: str) -> None:
    overrides = ["optim.lr=0.00123", "train.seed=5"]
    text = config_lib.show(name, overrides)
    cfg = config_lib.load(name, overrides)
    assert yaml.safe_load(text) == cfg.to_dict()
    assert config_lib.from_dict(yaml.safe_load(text)) == cfg
    first = text.splitlines()[0]
    assert first.startswith("# resolved from: ")
    assert [s.split()[0] for s in first.removeprefix("# resolved from: ").split(" -> ")] == [
        p.name for p in config_lib.recipe_chain(name)
    ]
    assert "optim.lr=0.00123" in text.splitlines()[1]


def test_show_without_overrides_is_what_save_writes(tmp_path) -> None:
    text = config_lib.show("ibot_vit_tiny_fmnist")
    config_lib.save(config_lib.load("ibot_vit_tiny_fmnist"), tmp_path / "config.yaml")
    header, body = text.split("\n", 1)
    chain = "ibot_vit_tiny_fmnist.yaml -> dino_vit_tiny_fmnist.yaml"
    assert header == f"# resolved from: {chain} (each file extends the next)"
    assert body == (tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_chain_resolves(name: str) -> None:
    chain = config_lib.recipe_chain(name)
    assert chain[0].stem == name
    assert all(p.parent == config_lib.CONFIG_DIR.resolve() for p in chain)  # shipped recipes extend shipped ones
    assert len(set(chain)) == len(chain)
    config_lib.validate(config_lib.load(name))


def test_the_variant_recipes_name_their_base() -> None:
    bases = {name: [p.stem for p in config_lib.recipe_chain(name)][1:2] for name in RECIPES}
    assert bases["dino_vit_tiny_fmnist"] == [] and bases["dinov2_vitl14_lvd"] == []
    for name in ("dinov2_vit_tiny_fmnist_highres", "dinov2_vit_small_fmnist", "dinov2_distill_fmnist"):
        assert bases[name] == ["dinov2_vit_tiny_fmnist"]
    assert bases["ibot_vit_tiny_fmnist"] == ["dino_vit_tiny_fmnist"]
    assert bases["ibot_vits16_imagenet"] == ["dino_vits16_imagenet"]


def test_num_global_crops_sizes_the_sinkhorn_message() -> None:
    assert config_lib.NUM_GLOBAL_CROPS == 2
    with pytest.raises(ConfigError, match=f"x {config_lib.NUM_GLOBAL_CROPS} global crops"):
        config_lib.load("dinov2_vit_tiny_fmnist", ["optim.batch_size=4"])
