"""Post-processing: detections, mask pasting, panoptic fusion, heatmap decoding."""
