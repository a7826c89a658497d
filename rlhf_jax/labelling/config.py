"""The labelling server's settings (importable without the web stack or JAX)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

MAX_RESPONSES = 9  # responses are lettered A-I and ranked with one digit


def _names(spec: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in spec.split(",") if n.strip())


@dataclasses.dataclass(frozen=True)
class LabelServerConfig:
    """A labelling server: a database (SQLite path or SQLAlchemy URL), the tasks (a JSONL file,
    or sampled from a policy checkpoint), the annotators and the pages' settings."""

    db: str = "labels.sqlite"  # SQLite file, or a database URL (postgresql+psycopg://…)
    tasks: str = ""  # JSONL of {"prompt", "responses": [2..9 strings], optional "id", "meta"}
    policy_dir: str = ""  # or sample the tasks from this policy (Hugging Face directory)
    prompts: str = ""  # prompts JSONL ({"prompt": …}) for policy_dir; empty: built-in prompts
    num_prompts: int = 32  # how many prompts to sample tasks for (policy_dir)
    num_responses: int = 2  # responses sampled per prompt (policy_dir)
    max_new_tokens: int = 24  # sampling length (policy_dir)
    temperature: float = 1.0  # sampling temperature (policy_dir)
    max_prompt_len: int = 64  # prompt tokens kept (policy_dir)
    seed: int = 0  # sampling seed (policy_dir)
    annotators: str = "annotator1,annotator2,annotator3"  # comma-separated ids (new ones added)
    admins: str = "admin"  # comma-separated admin ids
    reissue: str = ""  # comma-separated ids whose login tokens are replaced by new ones
    tokens_file: str = ""  # also write the new login links here (mode 0600)
    token_lifetime_hours: float = 0.0  # login tokens and sessions expire after this (0: never)
    guidelines: str = ""  # a Markdown file of guidelines shown with every task
    labels_per_task: int = 3  # distinct annotators per task
    lease_s: float = 1800.0  # seconds a shown task is held for its annotator
    likert_low: int = 1  # rating scale's low end
    likert_high: int = 7  # rating scale's high end
    likert_labels: str = "very poor,excellent"  # what the scale's two ends mean, comma-separated
    ratings: bool = True  # ask for Likert ratings (optional per response)
    require_ratings: bool = False  # every response must be rated
    require_rationale: bool = False  # every label needs a rationale
    rationale_max_chars: int = 2000  # longest rationale accepted
    max_request_bytes: int = 65536  # largest request body accepted (413 beyond)
    host: str = "127.0.0.1"  # interface to listen on
    port: int = 8000  # port (0: any free port)
    export_to: str = ""  # write the labels as pairwise/ranking/rating JSONL here and exit
    export_without_quarantined: bool = False  # export_to leaves quarantined annotators out

    def __post_init__(self):
        if not self.db:
            raise ValueError("db is empty: give a SQLite file or a database URL")
        if self.num_responses < 2 or self.num_responses > MAX_RESPONSES:
            raise ValueError(f"num_responses={self.num_responses}: expected 2 to "
                             f"{MAX_RESPONSES}")
        if self.labels_per_task < 1:
            raise ValueError(f"labels_per_task={self.labels_per_task}: expected >= 1")
        if self.likert_low >= self.likert_high:
            raise ValueError(f"likert_low={self.likert_low} must be below likert_high="
                             f"{self.likert_high}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port={self.port}: expected 0 to 65535")
        if not self.token_lifetime_hours >= 0:
            raise ValueError(f"token_lifetime_hours={self.token_lifetime_hours}: expected >= 0 "
                             "(0: tokens do not expire)")
        if self.tasks and self.policy_dir:
            raise ValueError("give tasks or policy_dir, not both")
        for n in _names(self.annotators) + _names(self.admins):
            if not n or len(n) > 64 or not all(ch.isalnum() or ch in "-_." for ch in n):
                raise ValueError(f"annotator id {n!r}: expected 1-64 letters, digits, '-', "
                                 "'_' or '.'")
        if len(self.likert_labels.split(",")) != 2:
            raise ValueError(f"likert_labels={self.likert_labels!r}: expected two words for the "
                             "scale's ends, comma-separated")
        overlap = set(_names(self.annotators)) & set(_names(self.admins))
        if overlap:
            raise ValueError(f"{sorted(overlap)} are both annotators and admins")

    @property
    def url(self) -> str:
        """The database URL (a SQLite path made absolute)."""
        return self.db if "://" in self.db else f"sqlite:///{Path(self.db).resolve()}"

    @property
    def shown_url(self) -> str:
        """The database URL with any password masked, for messages."""
        from sqlalchemy.engine import make_url  # here: the config is read without the DB stack

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show nothing of it
            return "(unparsable database URL)"

    @property
    def token_lifetime_s(self):
        """The token lifetime in seconds, or None for none."""
        return self.token_lifetime_hours * 3600.0 if self.token_lifetime_hours else None

    def settings(self, guidelines: str = ""):
        """The pages' `AppSettings` from these fields, with the guidelines' Markdown text."""
        from rlhf_jax.labelling.app import AppSettings  # here: importing the web stack

        return AppSettings(likert=(self.likert_low, self.likert_high) if self.ratings else None,
                           likert_labels=tuple(x.strip() for x in self.likert_labels.split(",")),
                           require_ratings=self.require_ratings,
                           require_rationale=self.require_rationale,
                           rationale_max_chars=self.rationale_max_chars,
                           max_request_bytes=self.max_request_bytes, guidelines=guidelines)
