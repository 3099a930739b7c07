"""Many prompts at once: every (prompt, seed) is one ordinary run folder, trained as one task.

prompts.py   reading a prompts file and naming the runs
manifest.py  OUT/batch.json, the batch's record of every run
pool.py      where tasks run: a Ray cluster (local or joined), or this process one after another
task.py      what one task does: train a run (resuming it), export its mesh and turntable
runner.py    generate_many: the batch from start to finish, resumable and interruptible
cli.py       `dreamfusion batch`
"""
