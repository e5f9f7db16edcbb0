"""The generated reference pages match the code."""

from turnout.docgen import main


def test_reference_pages_are_up_to_date() -> None:
    assert main(["--check"]) == 0, "run `python -m turnout.docgen` and commit docs/reference"
