"""The coordinator's parts: one job each, each with its own state and its own clock.

The coordinator's loop once did all of this inline, and every fix to one job (a replica that
died, a checkpoint that failed) had to be read against all the others. Split this way, each
part can be read, and changed, alone; the coordinator only says in which order they run:

- `replicas`: the replica scheduler. Starts replicas, keeps two calls in flight per replica,
  seeks, replaces or frees the slot of a replica that failed, lets elastic replicas join, and
  holds each replica's data position and last stats.
- `stats`: shard statistics on their clock, turned into the metrics callbacks receive, and the
  progress bar.
- `evaluation`: asks the averager for an evaluation on its clock, stamped at its request.
- `checkpoints`: writes and reads `progress.json` beside the shards' and averager's files.

Faults are one `Counter` the coordinator owns and hands to every part that counts one, so a
checkpoint stores, and a resumed job continues, a single tally.
"""
