import json

import pytest

from blueberry_video.data.formats import (
    DatasetFormatError,
    DatasetListing,
    SkippedItem,
    VideoEntry,
    load_dataset_entries,
)

CAPTIONS = ["a red circle", "a blue square", "a green circle"]


@pytest.fixture
def dataset(tmp_path):
    """A folder with three (placeholder) video files; listing never opens them."""
    for index in range(3):
        (tmp_path / "videos").mkdir(exist_ok=True)
        (tmp_path / "videos" / f"{index}.mp4").write_bytes(b"video")
    return tmp_path


def records(video_key="file", caption_key="caption"):
    return [{video_key: f"videos/{i}.mp4", caption_key: caption} for i, caption in enumerate(CAPTIONS)]


def write_csv(root, header, rows):
    lines = [",".join(header)] + [",".join(row) for row in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def assert_three_entries(listing, root, captions=CAPTIONS):
    assert isinstance(listing, DatasetListing)
    assert list(listing) == [VideoEntry(i, root / "videos" / f"{i}.mp4", captions[i]) for i in range(3)]
    assert len(listing) == 3 and listing.skipped == []


def test_metadata_json(dataset):
    (dataset / "metadata.json").write_text(json.dumps(records()))
    assert_three_entries(load_dataset_entries(dataset), dataset)


def test_metadata_jsonl_ignores_blank_lines(dataset):
    lines = [json.dumps(record) for record in records("video", "prompt")]
    (dataset / "metadata.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    assert_three_entries(load_dataset_entries(dataset), dataset)


def test_metadata_csv_with_quoted_commas_and_bom(dataset):
    text = (
        'video_path,text\nvideos/0.mp4,"a red circle"\nvideos/1.mp4,a blue square\n'
        'videos/2.mp4,"a green, round circle"\n'
    )
    (dataset / "metadata.csv").write_text("\ufeff" + text, encoding="utf-8")
    listing = load_dataset_entries(dataset)
    assert_three_entries(listing, dataset, CAPTIONS[:2] + ["a green, round circle"])


def test_prompts_and_videos_txt(dataset):
    (dataset / "prompts.txt").write_text("\n".join(CAPTIONS) + "\n")
    (dataset / "videos.txt").write_text("\n".join(f"videos/{i}.mp4" for i in range(3)))
    assert_three_entries(load_dataset_entries(dataset), dataset)


# Characters str.splitlines would split a line at; an editor, wc -l and JSON Lines do not.
UNICODE_BREAKS = ["\u2028", "\u0085", "\x0c"]


@pytest.mark.parametrize("char", UNICODE_BREAKS)
def test_a_caption_holding_a_unicode_line_separator_stays_on_its_line(dataset, char):
    captions = [f"a red{char}circle", *CAPTIONS[1:]]
    (dataset / "prompts.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    (dataset / "videos.txt").write_text("\n".join(f"videos/{i}.mp4" for i in range(3)))
    assert_three_entries(load_dataset_entries(dataset), dataset, captions)


@pytest.mark.parametrize("char", UNICODE_BREAKS[:2])  # json.dumps escapes the form feed itself
def test_jsonl_as_json_dumps_writes_it_without_ascii_escapes(dataset, char):
    rows = records()
    rows[1]["caption"] = f"a blue{char}square"
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    (dataset / "metadata.jsonl").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    assert_three_entries(load_dataset_entries(dataset), dataset, [CAPTIONS[0], rows[1]["caption"], CAPTIONS[2]])


def test_json_rows_that_name_the_same_field_differently_are_refused_with_both_names(dataset):
    rows = records()
    rows[0] = {"video": rows[0]["file"], "prompt": rows[0]["caption"]}
    (dataset / "metadata.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetFormatError, match=r"metadata.json\[0\] names its field 'video' where other rows say "
                                                  r"'file'; use one name in every row"):
        load_dataset_entries(dataset)


def test_txt_files_named_by_the_columns_like_diffusers(dataset):
    (dataset / "captions.txt").write_text("\n".join(CAPTIONS))
    (dataset / "clips.txt").write_text("\n".join(f"videos/{i}.mp4" for i in range(3)))
    listing = load_dataset_entries(dataset, caption_column="captions.txt", video_column="clips.txt")
    assert_three_entries(listing, dataset)


@pytest.mark.parametrize("name", ["metadata.json", "metadata.csv"])
def test_custom_column_names(dataset, name):
    rows = [{"clip": f"videos/{i}.mp4", "description": c, "caption": "wrong"} for i, c in enumerate(CAPTIONS)]
    if name == "metadata.json":
        (dataset / name).write_text(json.dumps(rows))
    else:
        write_csv(dataset, ["clip", "description", "caption"], [r.values() for r in rows])
    listing = load_dataset_entries(dataset, caption_column="description", video_column="clip")
    assert_three_entries(listing, dataset)


def test_default_columns_follow_priority(dataset):
    rows = [{"path": "nope.mp4", "video": f"videos/{i}.mp4", "text": "no", "prompt": c} for i, c in enumerate(CAPTIONS)]
    (dataset / "metadata.json").write_text(json.dumps(rows))
    assert_three_entries(load_dataset_entries(dataset), dataset)


def test_id_token_prefixes_every_caption(dataset):
    (dataset / "metadata.json").write_text(json.dumps(records()))
    listing = load_dataset_entries(dataset, id_token="BW_STYLE")
    assert [entry.caption for entry in listing] == [f"BW_STYLE {c}" for c in CAPTIONS]


def test_absolute_path_inside_root_is_allowed(dataset):
    rows = records()
    rows[1]["file"] = str(dataset / "videos" / "1.mp4")
    (dataset / "metadata.json").write_text(json.dumps(rows))
    assert_three_entries(load_dataset_entries(dataset), dataset)


def test_an_absolute_path_through_another_spelling_of_the_folder_is_inside_it(dataset, tmp_path_factory):
    link = tmp_path_factory.mktemp("links") / "data"  # /data -> /mnt/nfs/data
    link.symlink_to(dataset)
    for given, listed in ((link, dataset), (dataset, link)):
        rows = records()
        rows[1]["file"] = str(listed / "videos" / "1.mp4")
        (dataset / "metadata.json").write_text(json.dumps(rows))
        assert_three_entries(load_dataset_entries(given), given)  # named from the folder as given


def test_skip_frames_must_not_be_negative(tmp_path):
    from blueberry_video.config import parse_config
    from blueberry_video.errors import ConfigError

    for name in ("skip_frames_start", "skip_frames_end"):
        with pytest.raises(ConfigError, match=f"{name}=-3: must be >= 0"):
            parse_config(["--pretrained_model_name_or_path", str(tmp_path), "--dummy_data", f"--{name}", "-3"])


def test_bad_rows_are_skipped_and_reported(dataset):
    rows = [
        ["videos/0.mp4", "a red circle"],
        ["videos/1.mp4", "   "],
        ["videos/missing.mp4", "a ghost"],
        ["./videos/0.mp4", "the same clip again"],
        ["", "no video"],
        ["videos/2.mp4", "a green circle"],
    ]
    write_csv(dataset, ["file", "caption"], rows)
    listing = load_dataset_entries(dataset)
    assert [(e.index, e.video_path.name, e.caption) for e in listing] == [
        (0, "0.mp4", "a red circle"),
        (1, "2.mp4", "a green circle"),
    ]
    sources = [item.source for item in listing.skipped]
    assert sources == ["metadata.csv row 3", "metadata.csv row 4", "metadata.csv row 5", "metadata.csv row 6"]
    reasons = [item.reason for item in listing.skipped]
    assert "no caption" in reasons[0]
    assert "video file not found" in reasons[1] and "missing.mp4" in reasons[1]
    assert "duplicate of metadata.csv row 2" in reasons[2]
    assert "no video path" in reasons[3]
    assert all(isinstance(item, SkippedItem) for item in listing.skipped)


def test_missing_json_fields_are_skipped_with_their_position(dataset):
    rows = records()
    del rows[1]["caption"]
    (dataset / "metadata.json").write_text(json.dumps(rows))
    listing = load_dataset_entries(dataset)
    assert len(listing) == 2
    assert listing.skipped[0].source == "metadata.json[1]"


def test_no_usable_rows_raises_with_reasons(dataset):
    (dataset / "metadata.jsonl").write_text(json.dumps({"file": "videos/none.mp4", "caption": "x"}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"no usable videos.*metadata.jsonl line 1: video file not found"):
        load_dataset_entries(dataset)


def test_empty_metadata_raises(dataset):
    (dataset / "metadata.json").write_text("[]")
    with pytest.raises(DatasetFormatError, match="lists no videos"):
        load_dataset_entries(dataset)


def test_missing_metadata_lists_accepted_files(dataset):
    with pytest.raises(DatasetFormatError) as caught:
        load_dataset_entries(dataset)
    for name in ("metadata.json", "metadata.jsonl", "metadata.csv", "prompts.txt + videos.txt"):
        assert name in str(caught.value)


def test_missing_root_raises(tmp_path):
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_dataset_entries(tmp_path / "nowhere")


def test_two_metadata_files_are_ambiguous(dataset):
    (dataset / "metadata.json").write_text(json.dumps(records()))
    write_csv(dataset, ["file", "caption"], [])
    with pytest.raises(DatasetFormatError, match="ambiguous.*metadata.json and metadata.csv"):
        load_dataset_entries(dataset)


def test_metadata_plus_txt_pair_is_ambiguous(dataset):
    (dataset / "metadata.jsonl").write_text("")
    (dataset / "prompts.txt").write_text("x")
    (dataset / "videos.txt").write_text("videos/0.mp4")
    with pytest.raises(DatasetFormatError, match="metadata.jsonl and prompts.txt \\+ videos.txt"):
        load_dataset_entries(dataset)


def test_malformed_json_names_the_line(dataset):
    (dataset / "metadata.json").write_text('[\n  {"file": "videos/0.mp4", "caption": "x"}\n  {"file": "b"}\n]')
    with pytest.raises(DatasetFormatError, match=r"metadata.json line 3 column 3 is not valid JSON"):
        load_dataset_entries(dataset)


def test_json_that_is_not_a_list(dataset):
    (dataset / "metadata.json").write_text('{"file": "videos/0.mp4"}')
    with pytest.raises(DatasetFormatError, match="JSON list of objects"):
        load_dataset_entries(dataset)


def test_jsonl_line_that_is_not_an_object(dataset):
    (dataset / "metadata.jsonl").write_text(json.dumps(records()[0]) + '\n["videos/1.mp4"]\n')
    with pytest.raises(DatasetFormatError, match="metadata.jsonl line 2 is a list"):
        load_dataset_entries(dataset)


def test_malformed_jsonl_names_the_line(dataset):
    (dataset / "metadata.jsonl").write_text(json.dumps(records()[0]) + '\n{"file": "videos/1.mp4",\n')
    with pytest.raises(DatasetFormatError, match="metadata.jsonl line 2 is not valid JSON"):
        load_dataset_entries(dataset)


def test_non_utf8_names_the_line(dataset):
    (dataset / "metadata.csv").write_bytes(b"file,caption\nvideos/0.mp4,caf\xe9\n")
    with pytest.raises(DatasetFormatError, match=r"metadata.csv line 2 is not valid UTF-8.*re-save"):
        load_dataset_entries(dataset)


def test_malformed_csv_names_the_row(dataset):
    (dataset / "metadata.csv").write_text('file,caption\nvideos/0.mp4,"a red"circle\n')
    with pytest.raises(DatasetFormatError, match="metadata.csv row 2 is not valid CSV"):
        load_dataset_entries(dataset)


def test_txt_line_counts_must_match(dataset):
    (dataset / "prompts.txt").write_text("\n".join(CAPTIONS))
    (dataset / "videos.txt").write_text("videos/0.mp4\nvideos/1.mp4\n")
    with pytest.raises(DatasetFormatError, match="has 3 lines but .*videos.txt has 2"):
        load_dataset_entries(dataset)


def test_prompts_without_videos_txt(dataset):
    (dataset / "prompts.txt").write_text("x")
    with pytest.raises(DatasetFormatError, match="videos.txt not found"):
        load_dataset_entries(dataset)


def test_columns_do_not_apply_to_txt_layout(dataset):
    (dataset / "prompts.txt").write_text("x")
    (dataset / "videos.txt").write_text("videos/0.mp4")
    with pytest.raises(DatasetFormatError, match="no columns"):
        load_dataset_entries(dataset, caption_column="caption")


def test_unknown_column_lists_available_ones(dataset):
    (dataset / "metadata.json").write_text(json.dumps(records()))
    with pytest.raises(
        DatasetFormatError, match=r"no column 'description' \(available: file, caption\).*caption_column"
    ):
        load_dataset_entries(dataset, caption_column="description")


def test_no_default_column_found(dataset):
    write_csv(dataset, ["clip", "caption"], [["videos/0.mp4", "x"]])
    with pytest.raises(DatasetFormatError, match="none of the columns file, video.*set video_column"):
        load_dataset_entries(dataset)


@pytest.mark.parametrize("bad_path", ["../outside.mp4", "videos/../../outside.mp4", "/etc/passwd"])
def test_paths_outside_the_root_raise(dataset, bad_path):
    rows = records()
    rows[2]["file"] = bad_path
    (dataset / "metadata.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetFormatError, match=r"metadata.json\[2\]: video path .* points outside"):
        load_dataset_entries(dataset)


def test_dataset_format_error_is_a_value_error():
    assert issubclass(DatasetFormatError, ValueError)


def test_csv_rows_with_more_fields_than_the_header_name_the_rows_and_the_fix(dataset):
    # An unquoted comma splits the caption; csv would keep "a cat" and drop the rest without a word.
    (dataset / "metadata.csv").write_text(
        "file,caption\nvideos/0.mp4,a cat, a dog and a bird\nvideos/1.mp4,a blue square\n"
        + "".join(f"videos/2.mp4,a cat, a dog number {n}\n" for n in range(6))
    )
    with pytest.raises(DatasetFormatError) as caught:
        load_dataset_entries(dataset)
    message = str(caught.value)
    assert message.startswith(f"{dataset / 'metadata.csv'}: 7 row(s) have more fields than the header's 2")
    assert "(rows 2, 4, 5, 6, 7, ...)" in message
    assert 'quote captions that contain commas: "a cat, a dog"' in message


@pytest.mark.parametrize("name", ["metadata.csv", "metadata.jsonl"])
def test_default_column_names_ignore_case_and_surrounding_spaces(dataset, name):
    # As spreadsheets export them: "File, Caption".
    if name == "metadata.csv":
        write_csv(dataset, ["File", " Caption"], [[f"videos/{i}.mp4", f" {c}"] for i, c in enumerate(CAPTIONS)])
    else:
        lines = [json.dumps({"VIDEO ": f"videos/{i}.mp4", "Prompt": c}) for i, c in enumerate(CAPTIONS)]
        (dataset / name).write_text("\n".join(lines) + "\n")
    assert_three_entries(load_dataset_entries(dataset), dataset)


def test_chosen_column_names_ignore_case_and_surrounding_spaces(dataset):
    write_csv(dataset, ["Clip", "Description ", "caption"], [[f"videos/{i}.mp4", c, "wrong"] for i, c in
                                                             enumerate(CAPTIONS)])
    listing = load_dataset_entries(dataset, caption_column=" description", video_column="clip")
    assert_three_entries(listing, dataset)


def test_columns_that_differ_only_in_case_are_refused_unless_named_exactly(dataset):
    write_csv(dataset, ["file", "Caption", "caption "], [[f"videos/{i}.mp4", c, "wrong"] for i, c in
                                                         enumerate(CAPTIONS)])
    with pytest.raises(DatasetFormatError, match=r"columns 'Caption', 'caption ' differ only in case.*caption_column"):
        load_dataset_entries(dataset)
    assert_three_entries(load_dataset_entries(dataset, caption_column="Caption"), dataset)


def test_video_files_the_metadata_does_not_name_are_listed(dataset):
    (dataset / "metadata.json").write_text(json.dumps(records()[:2] + [{"file": "videos/2.mp4", "caption": ""}]))
    (dataset / "extra" / "deep").mkdir(parents=True)
    for name in ("extra/a.MOV", "extra/deep/b.webm", "videos/notes.txt"):
        (dataset / name).write_bytes(b"video")
    # Not the dataset's: the default latent cache, macOS's "._" files, a cache folder chosen inside the dataset.
    for name in (".latent_cache/x.mp4", "videos/._0.mp4", "cache/y.mp4"):
        (dataset / name).parent.mkdir(exist_ok=True)
        (dataset / name).write_bytes(b"video")
    listing = load_dataset_entries(dataset, ignore=dataset / "cache")
    assert listing.metadata == "metadata.json"
    # videos/2.mp4 is named (by a row skipped for its empty caption, which is reported already).
    assert listing.unlisted_videos == [dataset / "extra/a.MOV", dataset / "extra/deep/b.webm"]


def test_captions_in_txt_files_beside_the_videos(dataset):
    for index, caption in enumerate(CAPTIONS):
        # A camera's or a Windows tool's upper-case name too
        (dataset / "videos" / f"{index}.{'TXT' if index == 1 else 'txt'}").write_text(f"{caption}\n")
    listing = load_dataset_entries(dataset)
    assert_three_entries(listing, dataset)
    assert listing.unlisted_videos == []


def test_a_video_path_in_another_case_is_named_with_the_file_it_may_mean(dataset):
    rows = records()
    rows[2]["file"] = "VIDEOS/2.mp4"
    (dataset / "metadata.json").write_text(json.dumps(rows))
    [skipped] = load_dataset_entries(dataset).skipped
    assert skipped.reason == (f"video file not found: {dataset / 'VIDEOS/2.mp4'} (did you mean videos/2.mp4? names "
                              f"are case-sensitive here)")


@pytest.mark.parametrize("name", ["videos", "prompts"])
def test_a_video_named_like_half_of_the_text_pair_keeps_its_caption_beside_it(tmp_path, name):
    (tmp_path / f"{name}.mp4").write_bytes(b"video")
    (tmp_path / f"{name}.txt").write_text("a clip named like the pair file")
    (tmp_path / "x.mp4").write_bytes(b"video")
    (tmp_path / "x.txt").write_text("another clip")
    listing = load_dataset_entries(tmp_path)
    assert {entry.video_path.name: entry.caption for entry in listing} == {
        f"{name}.mp4": "a clip named like the pair file", "x.mp4": "another clip"}


def test_a_link_to_a_listed_video_is_a_duplicate_and_a_linked_folder_holds_no_unlisted_videos(dataset):
    (dataset / "clip.mp4").symlink_to(dataset / "videos" / "0.mp4")
    (dataset / "again").symlink_to(dataset / "videos")
    rows = [*records(), {"file": "clip.mp4", "caption": "the first video once more"}]
    (dataset / "metadata.json").write_text(json.dumps(rows))
    listing = load_dataset_entries(dataset)
    assert len(listing) == 3
    assert listing.skipped == [SkippedItem("metadata.json[3]", "duplicate of metadata.json[0] (clip.mp4)")]
    assert listing.unlisted_videos == []


def test_a_semicolon_separated_csv_and_windows_paths_get_their_fix(dataset):
    (dataset / "metadata.csv").write_text("file;caption\nvideos/0.mp4;a red circle\n")
    with pytest.raises(DatasetFormatError, match="its header looks separated by semicolons: save it with commas"):
        load_dataset_entries(dataset)
    (dataset / "metadata.csv").write_text("file,caption\nvideos\\0.mp4,a red circle\nvideos/1.mp4,a blue square\n")
    listing = load_dataset_entries(dataset)
    assert listing.skipped[0].reason.endswith("(write paths with / between folders, not \\)")


def test_a_video_without_its_caption_txt_is_skipped(dataset):
    for index in (0, 2):
        (dataset / "videos" / f"{index}.txt").write_text(CAPTIONS[index])
    listing = load_dataset_entries(dataset)
    assert [entry.video_path.name for entry in listing] == ["0.mp4", "2.mp4"]
    assert listing.skipped == [SkippedItem("videos/1.txt", "no caption for videos/1.mp4 (missing, empty or not text)")]


def test_caption_txt_files_have_no_columns(dataset):
    (dataset / "videos" / "0.txt").write_text(CAPTIONS[0])
    with pytest.raises(DatasetFormatError, match="beside the videos, which have no columns"):
        load_dataset_entries(dataset, caption_column="caption")
