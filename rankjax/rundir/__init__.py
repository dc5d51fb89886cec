"""The run folder (a workdir): the one place that names its files and reads its progress. Imports no JAX, so
launchers, sweeps and the report use it without loading an accelerator runtime.

    WORKDIR/config.json       the resolved config (`layout.CONFIG_FILE`), written when a run starts
    WORKDIR/metrics.jsonl     one JSON object per logged step, `step` = completed optimizer steps
    WORKDIR/checkpoints/<N>/  the committed Orbax checkpoint of step N (a temporary folder renamed into place)
    WORKDIR/eval/step_<N>/    the periodic evaluation after step N (results.json, samples.jsonl, results.md)
    WORKDIR/eval/row.json     a script's own evaluation of the run (the demo's greedy accuracy, ...)
    WORKDIR/tensorboard/      TensorBoard event files
    WORKDIR/hf/               the trained model as a Hugging Face checkpoint (config.export_hf; LoRA: merged)
    WORKDIR/peft_adapter/     a LoRA run's adapters as a PEFT adapter (config.export_hf)

A run is finished (`progress.is_finished`) when relaunching it would train nothing: see that function.
"""
