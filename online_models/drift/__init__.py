"""The drift monitor: detectors on the learner's signals and the inputs, alerts, fine-tunes."""
