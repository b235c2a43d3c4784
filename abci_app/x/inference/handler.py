"""Inference message handlers: message -> keeper."""

from __future__ import annotations

import dataclasses

from abci_app.msgs import MsgSpec
from abci_app.x.inference.keeper import InferenceKeeper
from abci_app.x.inference.types import (
    DUTIES,
    validate_commit_answer,
    validate_commit_scores,
    validate_equivocation,
    validate_reveal_answer,
    validate_reveal_scores,
    validate_submit,
)
from wire.llmnet.inference.v1 import inference_pb2 as pb


def msg_specs(keeper: InferenceKeeper) -> list[MsgSpec]:
    specs = [
        MsgSpec(pb.MsgSubmitQuery, lambda m: m.requester, validate_submit, keeper.submit),
        MsgSpec(pb.MsgCommitAnswer, lambda m: m.respondent, validate_commit_answer, keeper.commit_answer),
        MsgSpec(pb.MsgRevealAnswer, lambda m: m.respondent, validate_reveal_answer, keeper.reveal_answer),
        MsgSpec(pb.MsgCommitScores, lambda m: m.scorer, validate_commit_scores, keeper.commit_scores),
        MsgSpec(pb.MsgRevealScores, lambda m: m.scorer, validate_reveal_scores, keeper.reveal_scores),
        MsgSpec(pb.MsgReportEquivocation, lambda m: m.reporter, validate_equivocation, keeper.report_equivocation),
    ]
    return [dataclasses.replace(s, duty=s.cls in DUTIES) for s in specs]
