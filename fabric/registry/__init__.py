"""The registry: schemas (versioned, with compatibility checks), provider and consumer
manifests, stored in the compacted topic ``<prefix>.registry`` and cached in each process."""
