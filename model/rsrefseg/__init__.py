"""RSRefSeg: SigLIP features, activated by the query text, prompt SAM to draw the referred mask."""
