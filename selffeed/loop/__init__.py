"""The loop: :mod:`~selffeed.loop.rounds` runs prepare, fine-tune, then sample -> filter -> retrain -> validate
rounds with the stage calls passed in; :mod:`~selffeed.loop.stages` are those stages as plain functions;
:mod:`~selffeed.loop.policy` decides each round's training mix, the stop rules and the best round;
:mod:`~selffeed.loop.curriculum` which difficulties each round's pool draws from."""
