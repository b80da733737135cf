"""Ray Tune: sweeps over augments and learning rates, and trials that are whole parameter-server
trainings."""
