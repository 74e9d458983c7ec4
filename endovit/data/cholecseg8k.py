"""CholecSeg8k's facts: its 13 classes by watershed value, EndoViT's 8-class merge, its videos and EndoViT's split.

From EndoViT's ``datasets/CholecSeg8k/utils/CholecSeg8k_color_dict*.py`` and its segmentation fine-tuning configs
(``finetuning/semantic_segmentation/output_dir/*/Run*_config*.json``: train 1, 9, 18, 20, 24, 25, 26, 28, 35, 37, 43,
48, 55; validation 17, 52; test 12, 27).
"""
from __future__ import annotations

__all__ = ["CLASSES_13", "WATERSHED", "UNLABELLED", "CLASSES_8", "MERGE_8", "COLOURS_13", "COLOURS_8", "VIDEOS",
           "TEST_VIDEOS"]

# watershed value -> class, in EndoViT's 13-class order (its CholecSeg8k_color_dict.py)
CLASSES_13 = ["Black Background", "Abdominal Wall", "Liver", "Gastrointestinal Tract", "Fat", "Grasper",
              "Connective Tissue", "Blood", "Cystic Duct", "L-hook Electrocautery", "Gallbladder", "Hepatic Vein",
              "Liver Ligament"]
WATERSHED = [50, 11, 21, 13, 12, 31, 23, 24, 25, 32, 22, 33, 5]
UNLABELLED = (255, 0)  # white 1-px edges, and pixels nobody labelled
CLASSES_8 = ["Black Background", "Abdominal Wall", "Liver", "Gastrointestinal Tract", "Fat", "Gallbladder", "Misc",
             "Instrument"]
MERGE_8 = [0, 1, 2, 3, 4, 7, 6, 6, 6, 7, 5, 6, 6]  # 13-class id -> EndoViT's 8-class id
# the colour masks' colours (RGB) of the 13 classes, and EndoViT's picture colours of the 8
COLOURS_13 = [(127, 127, 127), (210, 140, 140), (255, 114, 114), (231, 70, 156), (186, 183, 75), (170, 255, 0),
              (255, 85, 0), (255, 0, 0), (255, 255, 0), (169, 255, 184), (255, 160, 165), (0, 50, 128), (111, 74, 0)]
COLOURS_8 = [(127, 127, 127), (210, 140, 140), (255, 114, 114), (231, 70, 156), (186, 183, 75), (255, 255, 0),
             (45, 158, 227), (170, 255, 0)]
VIDEOS = (1, 9, 12, 17, 18, 20, 24, 25, 26, 27, 28, 35, 37, 43, 48, 52, 55)  # CholecSeg8k's 17 Cholec80 videos
TEST_VIDEOS = (12, 27)  # EndoViT's CholecSeg8k test videos (finetuning/semantic_segmentation configs)
