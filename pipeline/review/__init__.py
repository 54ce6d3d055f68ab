"""Annotation review: the run's models point annotators at the clips most likely mislabelled.

`pipeline.review.stage.run_review_stage` scores every kept clip of every split for four kinds of
likely annotation error (transcript, intent, wake flag, entities; one module each) and writes one
queue ranked by suspicion across the kinds, a report section, and a W&B table.
"""
