"""rsrs.workflows: what a user runs (run, train, evaluate, synth), the job schema, the cluster, the CLI."""
