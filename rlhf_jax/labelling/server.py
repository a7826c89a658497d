"""`experiments/label_server.py`: open the database, load or sample the tasks, register the
annotators, print the login links and serve the app with uvicorn (or export the labels)."""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from rlhf_jax import data, train
from rlhf_jax.labelling import export as export_mod
from rlhf_jax.labelling.app import create_app
from rlhf_jax.labelling.store import LabelStore
from rlhf_jax.labelling.config import LabelServerConfig, _names
from rlhf_jax.labelling.guidelines import read_guidelines
from rlhf_jax.labelling.tasks import read_tasks, sample_tasks
from rlhf_jax.sampling import SamplingConfig


def open_store(cfg: LabelServerConfig) -> LabelStore:
    """The store at `cfg.db`; a database that cannot be opened stops with its URL named."""
    if "://" not in cfg.db:
        parent = Path(cfg.db).resolve().parent
        if not parent.is_dir():
            raise train.ConfigError(f"db={cfg.db!r}: directory {parent} does not exist")
    try:
        return LabelStore(cfg.url, labels_per_task=cfg.labels_per_task, lease_s=cfg.lease_s,
                          token_lifetime_s=cfg.token_lifetime_s)
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


def app_settings(cfg: LabelServerConfig):
    """The pages' settings, with the guidelines file read (ConfigError naming it if it cannot
    be)."""
    try:
        return cfg.settings(read_guidelines(cfg.guidelines) if cfg.guidelines else "")
    except ValueError as e:
        raise train.ConfigError(f"guidelines: {e}") from None


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)  # an existing file keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(text)


def serve(cfg: LabelServerConfig) -> None:
    """Prepare the database and serve the app until interrupted (or export, with
    `cfg.export_to`)."""
    settings = None if cfg.export_to else app_settings(cfg)
    store = open_store(cfg)
    if cfg.export_to:
        manifest = export_mod.export_all(
            store.labels(), cfg.export_to, (cfg.likert_low, cfg.likert_high),
            leave_out_annotators=store.quarantined() if cfg.export_without_quarantined else None)
        if "left_out" in manifest:
            left = manifest["left_out"]
            print(f"left out {left['labels']} labels of quarantined annotators: "
                  f"{', '.join(left['annotators']) or '(nobody is quarantined)'}")
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
    if cfg.token_lifetime_s:
        lines.append(f"Login links and sessions last {cfg.token_lifetime_hours:g} hours from "
                     "when they are issued or opened")
    lines.append(f"Serving on {base}/")
    if cfg.tokens_file and tokens:
        _write_private(cfg.tokens_file, "".join(f"{n}\t{base}/login?token={t}\n"
                                                for n, t in tokens.items()))
    print("\n".join(lines), flush=True)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(store, settings), log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        store.close()

