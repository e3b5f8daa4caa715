"""The experiment pipeline: train → decode → score → leaderboard."""
