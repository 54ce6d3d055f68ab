from pipeline.text import normalize_text, number_to_words, ordinal_to_words


def test_numbers_are_spelled() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(21) == "twenty one"
    assert number_to_words(105) == "one hundred five"
    assert number_to_words(2024) == "two thousand twenty four"
    assert number_to_words(3_000_000) == "three million"


def test_normalise_case_punctuation_numbers_whitespace() -> None:
    assert normalize_text("  Wake me up at 7:30, please!  ") == "wake me up at seven thirty please"
    assert normalize_text("Set volume to 2.5") == "set volume to two point five"
    assert normalize_text("don't 'quote' me") == "don't quote me"
    assert normalize_text("Café & Crème 50%") == "cafe and creme fifty percent"
    assert normalize_text("") == ""


def test_normaliser_is_idempotent() -> None:
    for text in ["Play Taylor Swift's 1989", "what's the weather in new york?"]:
        once = normalize_text(text)
        assert normalize_text(once) == once


def test_ordinals_are_spelled_as_said() -> None:
    assert [ordinal_to_words(n) for n in (1, 2, 3, 5, 12, 20, 21, 40, 100)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty first", "fortieth", "one hundredth"]
    assert normalize_text("Remind me on the 2nd, the 21ST and the 3rd floor") == (
        "remind me on the second the twenty first and the third floor")


def test_a_number_with_thousands_commas_is_one_number() -> None:
    assert normalize_text("set a timer for 1,500 seconds") == "set a timer for one thousand five hundred seconds"
    assert normalize_text("1,000,000 steps, the 1,000th") == "one million steps the one thousandth"
    assert normalize_text("pick 1,2 or 3") == "pick one two or three"  # a list, not a grouped number


def test_a_digit_run_longer_than_any_spoken_number_is_read_digit_by_digit() -> None:
    # Card and order numbers are read so; a run of over 4,300 digits made int() raise.
    assert normalize_text("card 4111222233334444") == "card four one one one two two two two three three three three four four four four"
    assert normalize_text("999999999999 and 1000000000000") == (
        "nine hundred ninety nine billion nine hundred ninety nine million nine hundred ninety nine thousand nine "
        "hundred ninety nine and one zero zero zero zero zero zero zero zero zero zero zero zero")
    assert normalize_text("the 1234567890123rd") == "the one two three four five six seven eight nine zero one two third"
    assert normalize_text("5" * 5000) == " ".join(["five"] * 5000)
