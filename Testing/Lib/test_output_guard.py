"""The one output guard (MedXAILib.io.outputs): outputs never overwrite inputs, and appear all together or not at all.

The command-line part walks every ``medxai`` subcommand: each declares which options name its inputs
and its outputs (``common.declare_io``), no option that writes is left undeclared, and for every
declared output option and every input option the command refuses, before any work, to write over that
input: exit code 2, one line, the input byte for byte unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import pytest

from MedXAILib.cli.main import build_parser, main
from MedXAILib.errors import InputError
from MedXAILib.io.outputs import Output, OutputSet

#: Words in an option's help that say it writes a file.
WRITES = ("write", "output folder", "folder for")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def digest(path: Path) -> str:
    if path.is_dir():
        return ",".join(sorted(f"{p.relative_to(path)}:{digest(p)}" for p in path.rglob("*") if p.is_file()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Every subcommand, every output option, every input


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_declares_its_inputs_and_outputs(name):
    parser = subcommands()[name]
    assert parser.get_default("io_inputs") is not None and parser.get_default("io_outputs") is not None, (
        f"'medxai {name}' does not call common.declare_io: the output guard cannot know its paths")
    declared = {o.dest for o in parser.get_default("io_outputs")}
    for action in parser._actions:
        if action.help and any(w in action.help.lower() for w in WRITES) and action.nargs != 0:
            assert action.dest in declared, f"'medxai {name}' {action.option_strings} writes but is not a declared output"
    dests = {a.dest for a in parser._actions}
    for dest in [*declared, *parser.get_default("io_inputs")]:
        assert dest in dests, f"'medxai {name}' declares --{dest}, which it does not have"


def _arguments(parser: argparse.ArgumentParser, files: dict[str, Path], tmp: Path) -> list[str]:
    """The required options of `parser`, filled with existing files for inputs and fresh paths for outputs."""
    outputs = {o.dest: o for o in parser.get_default("io_outputs")}
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.dest != "help" and action.nargs != 0:
            argv.append(str(files.get(action.dest, files["any"])))  # a positional input (a request folder, a manifest)
        if not action.required or not action.option_strings:
            continue
        flag = action.option_strings[0]
        if action.dest in outputs:
            value = tmp / ("out" + (outputs[action.dest].suffixes[0] if outputs[action.dest].suffixes else ""))
        elif action.dest in parser.get_default("io_inputs"):
            value = files["any"]
        elif action.choices:
            value = sorted(action.choices)[0]
        elif action.type is int:
            value = 1
        else:
            value = "saliency"
        argv += [flag, str(value)]
    return argv


def _input_flags(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    flags = []
    for action in parser._actions:
        if action.dest in parser.get_default("io_inputs"):
            flag = action.option_strings[0] if action.option_strings else None
            flags.append((action.dest, flag))
    return flags


CASES = [(name, output.dest, dest, flag)
         for name, parser in sorted(subcommands().items())
         for output in parser.get_default("io_outputs") or ()
         for dest, flag in _input_flags(parser)]


@pytest.mark.parametrize("name, output, input_dest, input_flag", CASES,
                         ids=[f"{c[0]}--{c[1]}-onto-{c[2]}" for c in CASES])
def test_no_output_option_can_overwrite_any_input(name, output, input_dest, input_flag, tmp_path, capsys):
    parser = subcommands()[name]
    option = next(o for o in parser.get_default("io_outputs") if o.dest == output)
    victim = tmp_path / "inputs" / ("victim" + (option.suffixes[0] if option.suffixes else ".nrrd"))
    victim.parent.mkdir()
    victim.write_bytes(b"NRRD0004\nthe user's data\n")
    other = tmp_path / "inputs" / "other.json"
    other.write_text("{}")
    given = f"label_map={victim}" if input_dest == "param" else str(victim)
    files = {"any": other} if input_flag is not None else {"any": other, input_dest: victim}  # a positional input
    argv = [name, *_arguments(parser, files, tmp_path)]
    if input_flag is not None:
        argv += [input_flag, given]
    argv += ["--" + output.replace("_", "-"), str(victim)]
    before = digest(victim.parent)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"medxai {' '.join(argv)} exited {code}: {err}"
    assert err.count("\n") == 1 and err.startswith("medxai: error: "), err
    assert "never overwrites its inputs" in err, err
    assert digest(victim.parent) == before


def test_an_output_folder_inside_an_input_folder_is_refused(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    image = tmp_path / "ct.nrrd"
    image.write_bytes(b"x")
    before = digest(bundle)
    code = main(["compare", "--image", str(image), "--model", str(bundle), "--methods", "saliency",
                 "--out", str(bundle / "results")])
    assert code == 2 and "inside the input folder --model" in capsys.readouterr().err
    assert digest(bundle) == before and not (bundle / "results").exists()


# ------------------------------------------------------------------------------------------------
# OutputSet itself


def test_links_to_an_input_are_refused(tmp_path):
    source = tmp_path / "ct.nrrd"
    source.write_bytes(b"data")
    (tmp_path / "soft.nrrd").symlink_to(source)
    os.link(source, tmp_path / "hard.nrrd")
    for name in ("soft.nrrd", "hard.nrrd"):
        with pytest.raises(InputError, match="is an input file"):
            OutputSet([Output("--out", tmp_path / name)], [("--image", source)])


def test_a_nifti_output_whose_sidecar_would_replace_an_input_is_refused(tmp_path):
    spec = tmp_path / "attribution.json"  # e.g. a model spec that happens to share the stem
    spec.write_text("{}")
    with pytest.raises(InputError, match="is an input file"):
        OutputSet([Output("--out", tmp_path / "attribution.nii.gz")], [("--model", spec)])


def test_a_link_loop_is_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InputError, match="cannot resolve"):
        OutputSet([Output("--out", tmp_path / "x.nrrd")], [("--image", tmp_path / "a")])


@pytest.mark.parametrize("case, output, message", [
    ("folder for a file", lambda t: Output("--out", t), "is a folder"),
    ("file for a folder", lambda t: Output("--out", t / "f.txt", folder=True), "is a file"),
    ("missing parent", lambda t: Output("--out", t / "missing" / "a.nrrd"), "does not exist"),
    ("suffix", lambda t: Output("--json", t / "a.txt", (".json",)), "must end in .json"),
])
def test_unusable_outputs_are_refused_before_work(tmp_path, case, output, message):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match=message):
        OutputSet([output(tmp_path)])


def test_two_outputs_on_one_path_are_refused(tmp_path):
    with pytest.raises(InputError, match="--json and --out name the same file"):
        OutputSet([Output("--out", tmp_path / "a.json"), Output("--json", tmp_path / "a.json")])


def test_outputs_appear_together_at_commit_with_sidecars_and_folders(tmp_path):
    outputs = OutputSet([Output("--out", tmp_path / "map.nii.gz"), Output("--dir", tmp_path / "res", folder=True)])
    staged = outputs.staged(tmp_path / "map.nii.gz")
    staged.write_text("map")
    staged.with_name("map.json").write_text("{}")  # a sidecar the writer adds
    folder = outputs.staged(tmp_path / "res")
    (folder / "sub").mkdir()
    (folder / "sub" / "table.csv").write_text("a")
    assert not (tmp_path / "map.nii.gz").exists() and not (tmp_path / "res").exists()
    written = outputs.commit()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "map.json", "map.nii.gz", "res/sub/table.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.json", "map.nii.gz", "res"]  # no staging left


def test_a_failed_commit_leaves_nothing_new_and_earlier_files_intact(tmp_path, monkeypatch):
    (tmp_path / "b.json").write_text("earlier result")
    outputs = OutputSet([Output("--out", tmp_path / "a.nrrd"), Output("--json", tmp_path / "b.json")])
    outputs.staged(tmp_path / "a.nrrd").write_text("new a")
    outputs.staged(tmp_path / "b.json").write_text("new b")
    real_replace, calls = os.replace, []

    def full_disk(source, destination):
        calls.append(destination)
        if Path(destination).name == "b.json" and Path(source).name == "b.json":
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(InputError, match="No space left on device; nothing was written"):
        outputs.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]
    assert (tmp_path / "b.json").read_text() == "earlier result"


def test_an_exception_inside_the_block_discards_the_staging(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with OutputSet([Output("--out", tmp_path / "a.nrrd")]) as outputs:
            outputs.staged(tmp_path / "a.nrrd").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_commit_never_replaces_an_input_found_inside_an_output_folder(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    source = results / "ct.nrrd"
    source.write_bytes(b"data")
    outputs = OutputSet([Output("--out", results, folder=True)], [("--image", source)])
    (outputs.staged(results) / "ct.nrrd").write_bytes(b"map")
    with pytest.raises(InputError, match="would overwrite the input --image"):
        outputs.commit()
    assert source.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == ["results"]
