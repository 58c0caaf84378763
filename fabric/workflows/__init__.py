"""Reactions: declarative workflows that a detected situation starts in other systems.

``spec.py`` reads and checks a workflow as written (YAML, seed 000's shape): triggers,
phases of steps, retries, compensation, error handling and SLA targets. A workflow that
fails a check never reaches a worker; the error names the field."""

from fabric.workflows.spec import Workflow, WorkflowError, compile_workflow, load_workflows

__all__ = ["Workflow", "WorkflowError", "compile_workflow", "load_workflows"]
