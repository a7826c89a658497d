"""Human feedback collection: a labelling web app over a SQL database, agreement statistics and
export to the project's preference files."""
from rlhf_jax.labelling.app import AppSettings, create_app
from rlhf_jax.labelling.entities import (Annotator, Assignment, Forbidden, Label, LabelError,
                                         NotFound, Task, TaskFull)
from rlhf_jax.labelling.export import export_all, export_records
from rlhf_jax.labelling.server import LabelServerConfig, load_tasks, open_store, serve
from rlhf_jax.labelling.store import LabelStore
from rlhf_jax.labelling.tasks import read_tasks, sample_tasks
