"""Third-party image models through every nasc stage: PaddleOCR's detector, recognizer and direction classifier
(RapidOCR's paddle2onnx exports, -1 dims included), a document orientation classifier, a YOLOv8 detector.

Each stage is checked against ONNX Runtime on the original file with the tolerance in the model's corpus entry
(tools/model_corpus.py), on realistic inputs (scikit-image's scanned page and photos); a stage nasc cannot do by
design (the model does not fit a microcontroller) must be refused with nasc's clear error.
"""

from __future__ import annotations

import pytest
from corpus_cases import check_stage, stage_cases


@pytest.mark.slow
@pytest.mark.parametrize(("name", "stage"), stage_cases("images"))
def test_stage(name, stage, tmp_path):
    check_stage(name, stage, tmp_path)
