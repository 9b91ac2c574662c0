"""Third-party face, audio, byte and text models through every nasc stage: MTCNN's P-Net and O-Net (keras2onnx,
NHWC), Silero VAD (control flow with If, and its If-free LSTM export), Magika's file-type classifier (tf2onnx,
int32 bytes in) and a 3-layer MiniLM sentence encoder.

Inputs are realistic: photos, speech-like audio streamed chunk by chunk with the state carried over, the bytes of
real files, tokenized sentences. Tolerances are per model (tools/model_corpus.py).
"""

from __future__ import annotations

import pytest
from corpus_cases import check_stage, stage_cases


@pytest.mark.slow
@pytest.mark.parametrize(("name", "stage"), stage_cases("signals"))
def test_stage(name, stage, tmp_path):
    check_stage(name, stage, tmp_path)
