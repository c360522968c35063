"""What a run shows: pictures, TensorBoard event files, self-contained HTML reports."""
