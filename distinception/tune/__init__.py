"""Ray Tune: sweeps over recipes, and trials that are whole parameter-server trainings."""
