import json

from click.testing import CliRunner

from rsrs.workflows.cli import cli


def test_models_lists_every_preset_with_backbones_inputs_and_counts():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("tiny", "rsrefseg-b", "rsrefseg-l"):
        assert f"{name}\n" in result.output
    assert "SAM ViT 768x12 (facebook/sam-vit-base), input 1024px" in result.output
    assert "SigLIP 1152x27 (google/siglip-so400m-patch14-384), input 384px" in result.output
    assert "969,006,482 total, 16,613,170 trainable" in result.output


def test_models_json_is_machine_readable():
    result = CliRunner().invoke(cli, ["models", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["rsrefseg-l"]["total_params"] == 1_191_550_098
    assert rows["tiny"]["sam_input"] == 256
    assert rows["rsrefseg2-l"]["total_params"] == 1_447_126_197
    assert rows["rsrefseg2-l"]["sam"] == "SAM 2 Hiera 144x48 (facebook/sam2.1-hiera-large)"
    assert (rows["rsrefseg2-l"]["siglip_input"], rows["rsrefseg2-l"]["sam_input"]) == (512, 1024)


def test_every_command_has_help():
    runner = CliRunner()
    assert "rsrs models" in runner.invoke(cli, ["--help"]).output
    for name in cli.commands:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name
