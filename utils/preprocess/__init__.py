"""Stage 1 (preprocess_data.py): photos -> aligned crops + manifest.csv + preprocess.json.

    datasets.py         folder-per-identity discovery
    face_detection.py   MTCNN -> dlib HOG -> Haar -> centre box, the largest face
    face_alignment.py   similarity / margin / parts crops from landmarks
    settings.py         preprocess.json: the settings that travel with the crops
    manifest.py         manifest.csv: one row per crop
    shards.py           one dataset split across machines
    driver.py           the parallel, resumable preprocessing run
    input_pipeline.py   reading crops back (folders or packs) for the later stages
    identity_overlap.py people shared between two trees (e.g. training vs LFW)
"""
