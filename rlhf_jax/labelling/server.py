"""`experiments/label_server.py`: open the database, load or sample the tasks, register the
annotators, print the login links and serve the app with uvicorn (or export the labels)."""
from __future__ import annotations

import dataclasses
import os
import socket
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

from rlhf_jax import data, train
from rlhf_jax.labelling import export as export_mod
from rlhf_jax.labelling.app import AppSettings, create_app
from rlhf_jax.labelling.store import LabelStore
from rlhf_jax.labelling.tasks import MAX_RESPONSES, read_tasks, sample_tasks
from rlhf_jax.sampling import SamplingConfig


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
        return self.db if "://" in self.db else f"sqlite:///{Path(self.db).resolve()}"

    @property
    def shown_url(self) -> str:
        """The database URL with any password masked, for messages."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show nothing of it
            return "(unparsable database URL)"

    def settings(self) -> AppSettings:
        return AppSettings(likert=(self.likert_low, self.likert_high) if self.ratings else None,
                           likert_labels=tuple(x.strip() for x in self.likert_labels.split(",")),
                           require_ratings=self.require_ratings,
                           require_rationale=self.require_rationale,
                           rationale_max_chars=self.rationale_max_chars,
                           max_request_bytes=self.max_request_bytes)


def open_store(cfg: LabelServerConfig) -> LabelStore:
    """The store at `cfg.db`; a database that cannot be opened stops with its URL named."""
    if "://" not in cfg.db:
        parent = Path(cfg.db).resolve().parent
        if not parent.is_dir():
            raise train.ConfigError(f"db={cfg.db!r}: directory {parent} does not exist")
    try:
        return LabelStore(cfg.url, labels_per_task=cfg.labels_per_task, lease_s=cfg.lease_s)
    except ValueError as e:
        raise train.ConfigError(f"db: {e}") from None
    except Exception as e:  # the driver's own error: not a database, unreachable server, …
        if type(e).__module__.startswith("sqlalchemy"):
            raise train.ConfigError(f"db={cfg.shown_url} cannot be opened as a labelling "
                                    f"database: {str(e).splitlines()[0]}") from None
        raise


def load_tasks(cfg: LabelServerConfig) -> list[dict]:
    """The configured tasks: read from `cfg.tasks`, or sampled from `cfg.policy_dir`."""
    if cfg.tasks:
        return read_tasks(cfg.tasks)
    if not cfg.policy_dir:
        return []
    prompts = ([r["prompt"] for r in data.read_records(cfg.prompts, "prompt")[0]]
               if cfg.prompts else list(data.builtin.PROMPTS))
    prompts = [prompts[i % len(prompts)] for i in range(cfg.num_prompts)]
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    return sample_tasks(cfg.policy_dir, prompts, num_responses=cfg.num_responses,
                        max_prompt_len=cfg.max_prompt_len, sampling=sampling, seed=cfg.seed)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(text)


def serve(cfg: LabelServerConfig) -> None:
    """Prepare the database and serve the app until interrupted (or export, with
    `cfg.export_to`)."""
    store = open_store(cfg)
    if cfg.export_to:
        manifest = export_mod.export_all(store.labels(), cfg.export_to,
                                         (cfg.likert_low, cfg.likert_high))
        for kind, info in manifest["files"].items():
            print(f"{kind}: {info['records']} records -> {Path(cfg.export_to) / info['file']}")
        if not manifest["files"]:
            print(f"no labels yet; wrote {Path(cfg.export_to) / 'export.json'}")
        return
    tasks = load_tasks(cfg)
    added = store.add_tasks(tasks)
    if store.num_tasks() == 0:
        raise train.ConfigError("no tasks: give --config.tasks=FILE.jsonl or "
                                "--config.policy_dir=DIR (with --config.prompts=FILE.jsonl)")
    known = set(store.annotator_ids())
    tokens = {}
    for role, names in (("annotator", _names(cfg.annotators)), ("admin", _names(cfg.admins))):
        for name in names:
            if name not in known:
                tokens[name] = store.add_annotator(name, role)
    for name in _names(cfg.reissue):
        if name not in known and name not in tokens:
            raise train.ConfigError(f"reissue: no annotator {name!r}")
        tokens[name] = store.reissue_token(name)
    sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        raise train.ConfigError(f"host/port {cfg.host}:{cfg.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    lines = [f"{store.num_tasks()} tasks ({added} new), {cfg.labels_per_task} labels each, "
             f"database {cfg.shown_url}"]
    for name in store.annotator_ids():
        link = f"{base}/login?token={tokens[name]}" if name in tokens else \
            "(token issued earlier; --config.reissue=" + name + " makes a new one)"
        lines.append(f"  {name}: {link}")
    lines.append(f"Serving on {base}/")
    if cfg.tokens_file and tokens:
        _write_private(cfg.tokens_file, "".join(f"{n}\t{base}/login?token={t}\n"
                                                for n, t in tokens.items()))
    print("\n".join(lines), flush=True)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(store, cfg.settings()), log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        store.close()

