"""CITATION.cff is valid Citation File Format 1.2.0 (checked against the format's own JSON schema, kept in
tests/data from the cffconvert 2.0.0 package, CC BY 4.0) and cites the paper this book replicates."""

import json

import jsonschema
import yaml

from conftest import REPO

PAPER_TITLE = "Analysis of GPU-Accelerated Deep Neural Networks for Handwritten Digit Recognition"


def test_citation_cff_is_valid_cff_1_2_and_cites_the_paper():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    schema = json.loads((REPO / "tests" / "data" / "citation-file-format-1.2.0.schema.json").read_text())
    jsonschema.validate(citation, schema)  # raises with the first violation
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    paper = [r for r in citation["references"] if r["title"] == PAPER_TITLE]
    assert paper and paper[0]["authors"][0]["family-names"] == "Hegde"


def test_the_licence_named_in_the_citation_is_the_licence_file():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
