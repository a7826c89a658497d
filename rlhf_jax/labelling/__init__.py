"""Human feedback collection: a labelling web app over a SQL database, agreement statistics and
export to the project's preference files."""
from rlhf_jax._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "app": ("AppSettings", "create_app",),
    "entities": (
        "Annotator", "Assignment", "Forbidden", "Label", "LabelError", "NotFound", "Override",
        "Task", "TaskFull",
    ),
    "export": ("export_all", "export_records", "leave_out",),
    "config": ("LabelServerConfig",),
    "server": ("load_tasks", "open_store", "serve",),
    "store": ("LabelStore",),
    "tasks": ("read_tasks", "sample_tasks",),
})
