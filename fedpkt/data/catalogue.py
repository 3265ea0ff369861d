"""The persona fact catalogue of the synthetic corpus: slots, values, sentence templates.

A persona fact is a (slot, value) pair such as ("pet", "dog"). Each slot carries

* ``values``      the values a persona can hold (every slot is SINGLE-valued: a persona has at
                  most one value per slot, so stating another value of that slot contradicts it);
* ``description`` the PERSONA-CHAT style description sentence ("i have a dog.");
* ``templates``   paraphrases used inside dialogue replies ("my dog sleeps on my bed.");
* ``questions``   what a partner asks to invite that slot ("do you have any pets?").

Templates are written in the normalised form that :mod:`fedpkt.data.facts` matches against
(lower case, letters and spaces only): ``{v}`` is the value and ``{a}`` its article ("a"/"an").
The same templates therefore both generate the corpus and recognise facts in any text, which
is what makes the C-score oracle exact. ``tests/test_facts.py`` checks that every rendering of
every template is recognised as exactly its own fact and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedpkt.data.schema import Fact

VOWELS = frozenset("aeiou")


@dataclass(frozen=True)
class Slot:
    """One kind of persona fact; see the module docstring for the meaning of each field."""

    name: str
    values: tuple[str, ...]
    description: str
    templates: tuple[str, ...]
    questions: tuple[str, ...]


def article(value: str) -> str:
    """'an' before a vowel letter, else 'a' (enough for the catalogue's words)."""
    return "an" if value[:1] in VOWELS else "a"


def render(template: str, value: str) -> str:
    """Fill a template: ``render("i have {a} {v}", "owl") == "i have an owl"``."""
    return template.replace("{a}", article(value)).replace("{v}", value)


_JOBS = (
    "teacher",
    "nurse",
    "farmer",
    "chef",
    "doctor",
    "pilot",
    "mechanic",
    "lawyer",
    "plumber",
    "dentist",
    "baker",
    "cashier",
    "firefighter",
    "librarian",
    "carpenter",
    "accountant",
    "engineer",
    "artist",
    "waiter",
    "truck driver",
    "police officer",
    "hair stylist",
    "electrician",
)

SLOTS: tuple[Slot, ...] = (
    Slot(
        "job",
        _JOBS,
        "i work as {a} {v}",
        ("i work as {a} {v}", "i am {a} {v}", "i have been {a} {v} for years"),
        ("what do you do for a living?", "what is your job?"),
    ),
    Slot(
        "mother_job",
        _JOBS,
        "my mom is {a} {v}",
        ("my mom is {a} {v}", "my mother works as {a} {v}", "my mom has been {a} {v} forever"),
        ("what do your parents do?", "are you close to your mom?"),
    ),
    Slot(
        "pet",
        (
            "dog",
            "cat",
            "parrot",
            "hamster",
            "rabbit",
            "turtle",
            "goldfish",
            "snake",
            "horse",
            "lizard",
            "ferret",
            "pig",
            "iguana",
        ),
        "i have {a} {v}",
        (
            "i have {a} {v}",
            "my {v} sleeps in my room",
            "i love my pet {v}",
            "my {v} is my best friend",
        ),
        ("do you have any pets?", "are you an animal person?"),
    ),
    Slot(
        "food",
        (
            "pizza",
            "sushi",
            "tacos",
            "pasta",
            "burgers",
            "pancakes",
            "curry",
            "steak",
            "salad",
            "noodles",
            "soup",
            "fried chicken",
            "lasagna",
            "burritos",
            "ramen",
        ),
        "my favorite food is {v}",
        ("my favorite food is {v}", "i could eat {v} every day", "nothing beats a plate of {v}"),
        ("what is your favorite food?", "what do you like to eat?"),
    ),
    Slot(
        "drink",
        (
            "coffee",
            "tea",
            "iced tea",
            "lemonade",
            "orange juice",
            "apple juice",
            "milk",
            "soda",
            "hot chocolate",
            "smoothies",
        ),
        "my favorite drink is {v}",
        ("my favorite drink is {v}", "i drink {v} every morning", "i cannot live without {v}"),
        ("what do you like to drink?", "coffee or tea?"),
    ),
    Slot(
        "hobby",
        (
            "hiking",
            "painting",
            "knitting",
            "fishing",
            "gardening",
            "dancing",
            "reading",
            "camping",
            "surfing",
            "skating",
            "sewing",
            "bird watching",
            "woodworking",
            "cooking",
        ),
        "my favorite hobby is {v}",
        ("my favorite hobby is {v}", "i spend my weekends {v}", "in my free time i enjoy {v}"),
        ("what do you do for fun?", "do you have any hobbies?"),
    ),
    Slot(
        "sport",
        (
            "soccer",
            "tennis",
            "basketball",
            "baseball",
            "golf",
            "hockey",
            "volleyball",
            "football",
            "softball",
            "rugby",
        ),
        "i play {v}",
        ("i play {v} on weekends", "{v} is my favorite sport", "i am on {a} {v} team"),
        ("do you play any sports?", "what sports do you like?"),
    ),
    Slot(
        "instrument",
        (
            "guitar",
            "piano",
            "violin",
            "drums",
            "flute",
            "trumpet",
            "cello",
            "saxophone",
            "harp",
            "banjo",
            "ukulele",
        ),
        "i play the {v}",
        (
            "i play the {v}",
            "i practice the {v} every night",
            "i have played the {v} since i was little",
        ),
        ("can you play an instrument?", "are you musical at all?"),
    ),
    Slot(
        "music",
        (
            "rock",
            "jazz",
            "country",
            "pop",
            "rap",
            "classical",
            "metal",
            "blues",
            "folk",
            "reggae",
            "punk",
        ),
        "i listen to {v} music",
        ("i listen to {v} music", "{v} music is my favorite", "i always have {v} music on"),
        ("what kind of music do you like?", "what do you listen to?"),
    ),
    Slot(
        "color",
        ("red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white", "gray"),
        "my favorite color is {v}",
        ("my favorite color is {v}", "i wear {v} all the time", "i painted my room {v}"),
        ("what is your favorite color?",),
    ),
    Slot(
        "hometown",
        (
            "texas",
            "ohio",
            "florida",
            "alaska",
            "maine",
            "oregon",
            "iowa",
            "kansas",
            "nevada",
            "utah",
            "georgia",
            "vermont",
            "montana",
            "idaho",
            "arizona",
        ),
        "i am from {v}",
        ("i am from {v}", "i grew up in {v}", "i was born and raised in {v}"),
        ("where are you from?", "where did you grow up?"),
    ),
    Slot(
        "home",
        (
            "small town",
            "big city",
            "apartment",
            "cabin",
            "log cabin",
            "trailer",
            "tiny house",
            "beach house",
            "mansion",
            "condo",
        ),
        "i live in {a} {v}",
        ("i live in {a} {v}", "my home is {a} {v}", "these days i live in {a} {v}"),
        ("where do you live?", "what is your place like?"),
    ),
    Slot(
        "siblings",
        (
            "one brother",
            "one sister",
            "two brothers",
            "two sisters",
            "three brothers",
            "three sisters",
            "no siblings",
            "a twin brother",
            "a twin sister",
        ),
        "i have {v}",
        ("i have {v}", "i grew up with {v}", "growing up i had {v}"),
        ("do you have any siblings?", "how big is your family?"),
    ),
    Slot(
        "children",
        (
            "a son",
            "a daughter",
            "two kids",
            "three kids",
            "four kids",
            "twin girls",
            "twin boys",
            "a baby girl",
            "a baby boy",
        ),
        "i have {v}",
        ("i have {v} at home", "i am raising {v}", "i have {v}"),
        ("do you have kids?", "do you have a family of your own?"),
    ),
    Slot(
        "marital",
        ("married", "single", "divorced", "engaged", "widowed"),
        "i am {v}",
        ("i am {v}", "right now i am {v}", "i have been {v} for a while now"),
        ("are you married?", "are you seeing anyone?"),
    ),
    Slot(
        "age",
        ("teens", "twenties", "thirties", "forties", "fifties", "sixties", "seventies"),
        "i am in my {v}",
        ("i am in my {v}", "life in my {v} is good", "being in my {v} is fun"),
        ("how old are you?",),
    ),
    Slot(
        "car",
        (
            "truck",
            "van",
            "jeep",
            "minivan",
            "sports car",
            "convertible",
            "station wagon",
            "motorcycle",
            "scooter",
        ),
        "i drive {a} {v}",
        ("i drive {a} {v}", "i get around in my {v}", "my {v} is my pride and joy"),
        ("what do you drive?", "do you have a car?"),
    ),
    Slot(
        "season",
        ("spring", "summer", "fall", "winter"),
        "my favorite season is {v}",
        ("my favorite season is {v}", "{v} is the best time of year", "i wait all year for {v}"),
        ("what is your favorite season?", "do you like the cold?"),
    ),
    Slot(
        "movies",
        (
            "horror",
            "comedy",
            "action",
            "romance",
            "science fiction",
            "mystery",
            "western",
            "war",
            "animated",
            "documentary",
        ),
        "i like {v} movies",
        ("i like {v} movies", "{v} movies are my favorite", "i watch {v} movies every weekend"),
        ("what kind of movies do you like?", "seen any good movies lately?"),
    ),
    Slot(
        "books",
        (
            "mystery novels",
            "poetry",
            "comic books",
            "fantasy books",
            "history books",
            "cookbooks",
            "romance novels",
            "science books",
        ),
        "i like to read {v}",
        ("i like to read {v}", "i read {v} before bed", "my shelves are full of {v}"),
        ("do you like to read?", "what do you read?"),
    ),
    Slot(
        "diet",
        ("vegan", "vegetarian", "keto", "paleo", "gluten free", "low carb"),
        "i follow {a} {v} diet",
        ("i follow {a} {v} diet", "i am on {a} {v} diet", "i only eat {v} food"),
        ("are you on a diet?", "do you eat meat?"),
    ),
    Slot(
        "fear",
        (
            "spiders",
            "snakes",
            "heights",
            "clowns",
            "bees",
            "sharks",
            "needles",
            "birds",
            "crowds",
            "ghosts",
        ),
        "i am afraid of {v}",
        ("i am afraid of {v}", "i am terrified of {v}", "{v} scare me"),
        ("what are you afraid of?", "do you have any fears?"),
    ),
    Slot(
        "language",
        (
            "spanish",
            "french",
            "german",
            "italian",
            "japanese",
            "chinese",
            "russian",
            "arabic",
            "korean",
            "portuguese",
        ),
        "i speak {v}",
        ("i speak {v}", "i am fluent in {v}", "i learned {v} as a kid"),
        ("do you speak any other languages?",),
    ),
    Slot(
        "degree",
        (
            "biology",
            "history",
            "math",
            "art",
            "chemistry",
            "english",
            "physics",
            "economics",
            "psychology",
            "music",
        ),
        "i studied {v} in college",
        ("i studied {v} in college", "i have a degree in {v}", "i majored in {v}"),
        ("did you go to college?", "what did you study?"),
    ),
    Slot(
        "holiday",
        ("christmas", "halloween", "thanksgiving", "easter", "new year"),
        "my favorite holiday is {v}",
        (
            "my favorite holiday is {v}",
            "i decorate my whole house for {v}",
            "{v} is the best holiday",
        ),
        ("what is your favorite holiday?",),
    ),
    Slot(
        "travel",
        (
            "paris",
            "japan",
            "italy",
            "egypt",
            "brazil",
            "australia",
            "iceland",
            "peru",
            "greece",
            "mexico",
            "ireland",
            "india",
        ),
        "i want to visit {v}",
        (
            "i want to visit {v} one day",
            "my dream is to see {v}",
            "i am saving up for a trip to {v}",
        ),
        ("where would you like to travel?", "do you like to travel?"),
    ),
    Slot(
        "schedule",
        ("night owl", "early bird"),
        "i am {a} {v}",
        ("i am {a} {v}", "i have always been {a} {v}", "everyone knows i am {a} {v}"),
        ("are you a morning person?",),
    ),
    Slot(
        "height",
        ("tall", "short"),
        "i am very {v}",
        ("i am very {v}", "people say i am really {v}", "i have always been {v}"),
        ("what do you look like?",),
    ),
    Slot(
        "hair",
        ("red", "blonde", "curly", "long", "short", "black", "brown", "gray"),
        "i have {v} hair",
        ("i have {v} hair", "my hair is {v}", "people notice my {v} hair"),
        ("what do you look like?",),
    ),
    Slot(
        "dessert",
        (
            "cake",
            "pie",
            "cookies",
            "brownies",
            "cheesecake",
            "ice cream",
            "donuts",
            "cupcakes",
            "pudding",
        ),
        "my favorite dessert is {v}",
        ("my favorite dessert is {v}", "i always save room for {v}", "i bake {v} every weekend"),
        ("do you like sweets?", "what is your favorite dessert?"),
    ),
    Slot(
        "volunteer",
        (
            "animal shelter",
            "soup kitchen",
            "hospital",
            "library",
            "food bank",
            "nursing home",
            "school",
        ),
        "i volunteer at {a} {v}",
        (
            "i volunteer at {a} {v}",
            "on weekends i help out at {a} {v}",
            "i give my time to {a} {v}",
        ),
        ("do you volunteer anywhere?",),
    ),
    Slot(
        "collection",
        (
            "stamps",
            "coins",
            "rocks",
            "vinyl records",
            "dolls",
            "postcards",
            "seashells",
            "baseball cards",
            "action figures",
            "old maps",
        ),
        "i collect {v}",
        ("i collect {v}", "i have a big collection of {v}", "my hobby is collecting {v}"),
        ("do you collect anything?",),
    ),
    Slot(
        "personality",
        (
            "shy",
            "outgoing",
            "quiet",
            "loud",
            "funny",
            "calm",
            "happy",
            "serious",
            "lazy",
            "friendly",
        ),
        "i am {a} {v} person",
        (
            "i am {a} {v} person",
            "most people think i am {a} {v} person",
            "i have always been {a} {v} person",
        ),
        ("how would you describe yourself?",),
    ),
    Slot(
        "place",
        (
            "beach",
            "mountains",
            "lake",
            "park",
            "zoo",
            "museum",
            "mall",
            "river",
            "desert",
            "forest",
        ),
        "i love going to the {v}",
        ("i love going to the {v}", "my favorite place is the {v}", "i feel happiest at the {v}"),
        ("where do you like to go?", "what is your favorite place?"),
    ),
)

SLOT_BY_NAME: dict[str, Slot] = {slot.name: slot for slot in SLOTS}


def slot(name: str) -> Slot:
    """The slot called ``name`` (KeyError names the unknown slot)."""
    return SLOT_BY_NAME[name]


def all_facts() -> tuple[Fact, ...]:
    """Every (slot, value) the catalogue knows, in catalogue order."""
    return tuple(Fact(s.name, v) for s in SLOTS for v in s.values)


def describe(fact: Fact) -> str:
    """The PERSONA-CHAT style description sentence of a fact: ``"i have a dog."``."""
    return render(SLOT_BY_NAME[fact.slot].description, fact.value) + "."
