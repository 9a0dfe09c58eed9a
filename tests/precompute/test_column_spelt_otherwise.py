"""A CSV header written `prompt, completion, label` names the columns ' completion' and ' label':
the refusal says which column the file has, since the user sees 'completion' in their header
(it said only "missing column 'completion'")."""

from conftest import one_line_error, run_precompute


def test_a_header_with_spaces_after_commas_is_named(tiny_model_dir, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("prompt, completion, label\nHi?, Hello., true\nBye?, Go away., false\n")
    line = one_line_error(run_precompute("--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "cache")))
    assert "rows.csv: row 1: missing column 'completion' (the file has ' completion': column names are read exactly, spaces and case included); " in line
    assert not (tmp_path / "cache").exists()


def test_a_header_in_other_case_is_named(tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "Hi?", "Completion": "Hello.", "label": true}\n{"prompt": "Bye?", "Completion": "No.", "label": false}\n')
    line = one_line_error(run_precompute("--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "cache")))
    assert "missing column 'completion' (the file has 'Completion': column names are read exactly" in line


def test_a_header_whose_every_name_differs_in_case_is_named(tiny_model_dir, tmp_path):
    """A spreadsheet's `Prompt,Completion,Label`: no column matches, and the refusal says which
    would have (it listed the columns found only)."""
    data = tmp_path / "rows.csv"
    data.write_text("Prompt,Completion,Label\nHi?,Hello.,true\nBye?,No.,false\n")
    line = one_line_error(run_precompute("--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / "cache")))
    assert (
        "rows.csv: row 1: no known columns (found: Completion, Label, Prompt); column names are read exactly, spaces and case "
        "included ('Prompt' for 'prompt', 'Completion' for 'completion'?); "
    ) in line
