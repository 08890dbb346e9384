"""The drafter's training prompts, composed from seed topics and templates (nothing downloaded).

``load_prompts("train")`` composes them on every call, deterministically (seed below), so no
file of them ships; ``python -m bastion.prompts.synth OUT.jsonl`` writes them out to read.
Every template of a category is filled with seed words and random numbers, prompts
already in ``eval.jsonl`` are dropped, the rest is deduplicated and shuffled. The multi-turn
rows are finished later by the target itself (``bastion train-drafter`` answers their first
turn, then asks the follow-up): see README.md.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261202
HERE = Path(__file__).resolve().parent

# -- math ------------------------------------------------------------------------------------

PEOPLE = ["Maria", "Tom", "Aisha", "Kenji", "Lucas", "Priya", "Sofia", "Omar", "Emma", "Diego", "Lena", "Noah",
          "Chen", "Fatima", "Ivan", "Grace", "Mateo", "Zara", "Ben", "Hana"]
ITEMS = [("pencils", 0.75), ("notebooks", 2.5), ("apples", 0.4), ("books", 12), ("tickets", 8), ("sandwiches", 4.5),
         ("shirts", 15), ("candles", 3), ("plants", 6), ("mugs", 7), ("stickers", 0.25), ("bottles of water", 1.2)]
MATH_TEMPLATES = [
    lambda r: f"{r.choice(PEOPLE)} buys {r.randint(2, 12)} {(it := r.choice(ITEMS))[0]} at ${it[1]} each and pays with a ${r.choice([20, 50, 100])} bill. How much change does {r.choice(['she', 'he'])} get?",
    lambda r: f"A train travels {r.randint(60, 600)} km in {r.randint(2, 8)} hours. What is its average speed?",
    lambda r: f"What is {r.choice([5, 10, 12, 15, 20, 25, 30, 35, 40, 75])}% of {r.randint(20, 2000)}?",
    lambda r: f"Solve for x: {r.randint(2, 9)}x + {r.randint(1, 30)} = {r.randint(31, 120)}.",
    lambda r: f"Solve the system of equations: {r.randint(1, 5)}x + {r.randint(1, 5)}y = {r.randint(10, 40)} and x - y = {r.randint(1, 9)}.",
    lambda r: f"Find the area and perimeter of a rectangle that is {r.randint(3, 40)} cm long and {r.randint(2, 30)} cm wide.",
    lambda r: f"A circle has a radius of {r.randint(2, 25)} meters. What are its circumference and area?",
    lambda r: f"What is the derivative of f(x) = {r.randint(2, 9)}x^{r.randint(2, 5)} + {r.randint(2, 9)}x^2 - {r.randint(1, 20)}x + {r.randint(1, 9)}?",
    lambda r: f"Compute the integral of {r.randint(2, 8)}x^{r.randint(1, 4)} from 0 to {r.randint(1, 5)}.",
    lambda r: f"If {r.randint(3, 9)} workers can paint a house in {r.randint(4, 20)} days, how long would {r.randint(2, 12)} workers take?",
    lambda r: f"A shop offers a {r.choice([10, 15, 20, 25, 30, 40])}% discount on a jacket that costs ${r.randint(30, 300)}. What is the sale price?",
    lambda r: f"{r.choice(PEOPLE)} invests ${r.randint(5, 100) * 100} at {r.randint(2, 9)}% simple interest per year. How much interest after {r.randint(2, 10)} years?",
    lambda r: f"What is the probability of rolling a sum of {r.randint(2, 12)} with two fair dice?",
    lambda r: f"Find the greatest common divisor and least common multiple of {r.randint(6, 120)} and {r.randint(6, 120)}.",
    lambda r: f"Is {r.randint(50, 999)} a prime number? Explain how you check.",
    lambda r: f"Convert {r.randint(1, 500)} degrees Fahrenheit to Celsius and show the steps.",
    lambda r: f"The sum of three consecutive integers is {3 * r.randint(5, 300)}. What are the integers?",
    lambda r: f"A recipe needs {r.randint(2, 5)} cups of flour for {r.randint(8, 24)} cookies. How much flour is needed for {r.randint(30, 100)} cookies?",
    lambda r: f"Find the mean, median and mode of the numbers {', '.join(str(r.randint(1, 30)) for _ in range(r.randint(5, 9)))}.",
    lambda r: f"Factor the quadratic x^2 + {(a := r.randint(1, 9)) + (b := r.randint(1, 9))}x + {a * b}.",
    lambda r: f"Solve the quadratic equation x^2 - {r.randint(1, 12)}x + {r.randint(-20, 20)} = 0.",
    lambda r: f"A car uses {r.randint(4, 12)} liters of fuel per 100 km. How much fuel does it need for {r.randint(50, 900)} km?",
    lambda r: f"How many ways can {r.randint(3, 8)} people sit in a row of {r.randint(3, 8)} chairs?",
    lambda r: f"What is {r.randint(12, 99)} times {r.randint(12, 99)}? Show the multiplication step by step.",
    lambda r: f"A triangle has sides {r.randint(3, 12)}, {r.randint(4, 13)} and {r.randint(5, 14)}. Is it a right triangle? What is its perimeter?",
    lambda r: f"Simplify the fraction {r.randint(2, 60) * (k := r.randint(2, 9))}/{r.randint(2, 60) * k}.",
    lambda r: f"A tank holds {r.randint(100, 2000)} liters and drains at {r.randint(5, 50)} liters per minute. How long until it is empty?",
    lambda r: f"What is the sum of the first {r.randint(10, 200)} positive integers? Explain the formula.",
    lambda r: f"Find the slope and y-intercept of the line through ({r.randint(-9, 9)}, {r.randint(-9, 9)}) and ({r.randint(10, 20)}, {r.randint(-9, 30)}).",
    lambda r: f"{r.choice(PEOPLE)} is {r.randint(20, 60)} years old and {r.choice(PEOPLE)} is {r.randint(2, 19)}. In how many years will the first be exactly twice as old as the second?",
]

# -- code ------------------------------------------------------------------------------------

CODE_TASKS = [
    "reverses a string", "checks whether a string is a palindrome", "returns the n-th Fibonacci number",
    "computes the factorial of a number", "checks whether a number is prime", "finds the largest element in a list",
    "removes duplicates from a list while keeping order", "counts the words in a text", "merges two sorted lists",
    "implements binary search", "implements bubble sort", "implements merge sort", "implements quicksort",
    "flattens a nested list", "counts the vowels in a string", "converts Celsius to Fahrenheit",
    "finds the second largest number in a list", "checks whether two strings are anagrams", "computes the GCD of two numbers",
    "returns all prime numbers below n", "transposes a matrix", "multiplies two matrices", "validates an email address",
    "parses a CSV line into fields", "finds the most common element in a list", "rotates a list by k positions",
    "computes the running sum of a list", "checks whether parentheses in a string are balanced",
    "converts a Roman numeral to an integer", "converts an integer to binary", "finds all pairs in a list that sum to a target",
    "groups words by their first letter", "capitalizes the first letter of every word", "computes the median of a list",
    "chunks a list into pieces of size n", "returns the longest common prefix of a list of strings",
    "counts the frequency of each character", "implements a stack with push and pop", "implements a queue using two stacks",
    "reads a file and counts its lines", "finds the intersection of two lists", "checks whether a year is a leap year",
    "generates all permutations of a string", "computes the power set of a set", "implements a simple linked list",
    "reverses a linked list", "finds the depth of a binary tree", "does an in-order traversal of a binary tree",
    "implements a least-recently-used cache", "computes the edit distance between two strings",
    "finds the longest increasing subsequence", "solves the coin change problem", "computes the dot product of two vectors",
    "normalizes a list of numbers to the range 0 to 1", "converts a snake_case string to camelCase",
    "extracts all numbers from a string", "checks whether a number is a perfect square", "sums the digits of a number",
    "finds the missing number in a list from 1 to n", "shuffles a list", "implements the sieve of Eratosthenes",
    "formats a number with thousands separators", "computes the moving average of a list", "deep-copies a nested dictionary",
    "counts the occurrences of a substring", "splits a sentence into words without using split",
    "checks whether a list is sorted", "finds the index of the first repeated character", "computes compound interest",
    "implements a breadth-first search on a graph", "implements depth-first search on a graph",
    "detects a cycle in a directed graph", "computes the shortest path with Dijkstra's algorithm",
    "implements a min-heap", "parses a date string in YYYY-MM-DD format", "returns the number of days between two dates",
    "retries a function call up to three times", "validates a password's strength", "encodes a string with a Caesar cipher",
    "compresses a string using run-length encoding", "converts a list of pairs into a dictionary",
]
LANGUAGES = ["Python"] * 5 + ["JavaScript", "JavaScript", "TypeScript", "C", "C++", "Java", "Rust", "Go", "Ruby", "C#"]
CODE_TEMPLATES = [
    lambda r: f"Write a {r.choice(LANGUAGES)} function that {r.choice(CODE_TASKS)}.",
    lambda r: f"Write a {r.choice(LANGUAGES)} function that {r.choice(CODE_TASKS)}, with a short docstring and an example.",
    lambda r: f"How would I write code in {r.choice(LANGUAGES)} that {r.choice(CODE_TASKS)}? Explain the approach first.",
    lambda r: f"Write a Python function that {r.choice(CODE_TASKS)}, and add two unit tests for it.",
    lambda r: f"What is the time complexity of a function that {r.choice(CODE_TASKS)}? Give an implementation in {r.choice(LANGUAGES)}.",
    lambda r: f"Write a {r.choice(LANGUAGES)} class with a method that {r.choice(CODE_TASKS)}.",
    lambda r: f"Write a SQL query that returns {r.choice(SQL_ASKS)}.",
    lambda r: f"Write a bash command that {r.choice(SHELL_ASKS)}.",
    lambda r: f"Explain what this Python code does: {r.choice(SNIPPETS)}",
    lambda r: f"Fix the bug in this Python code: {r.choice(BUGGY)}",
]
SQL_ASKS = [
    "the top 5 customers by total order amount", "all employees who earn more than their manager",
    "the number of orders per month in 2023", "products that have never been ordered", "the average salary per department",
    "duplicate email addresses in a users table", "the second highest salary", "customers who placed more than three orders",
    "the total revenue per product category", "users who signed up in the last 30 days",
]
SHELL_ASKS = [
    "finds all .log files larger than 10 MB", "counts the lines of every Python file in a directory",
    "replaces a word in all text files of a folder", "shows the 10 largest files in a directory",
    "renames all .jpeg files to .jpg", "prints the disk usage of each subfolder", "finds files modified in the last day",
    "extracts the second column of a CSV file", "removes empty lines from a file", "lists the processes using the most memory",
]
SNIPPETS = [
    "[x * x for x in range(10) if x % 2 == 0]", "sorted(words, key=len, reverse=True)", "dict(zip(keys, values))",
    "sum(1 for line in open('f.txt') if line.strip())", "max(d, key=d.get)", "' '.join(reversed(s.split()))",
    "any(n % p == 0 for p in range(2, int(n ** 0.5) + 1))", "[row[i] for row in matrix for i in range(len(row))]",
    "functools.reduce(lambda a, b: a * b, nums, 1)", "collections.Counter(text.split()).most_common(3)",
]
BUGGY = [
    "def avg(xs): return sum(xs) / len(xs) + 1", "def last(xs): return xs[len(xs)]",
    "for i in range(1, len(a)): print(a[i])  # should print every element",
    "def is_even(n): return n % 2 == 1", "def add_item(item, items=[]): items.append(item); return items",
    "def fact(n): return n * fact(n - 1)", "if x = 5: print('five')", "def count(s, c): return s.find(c)",
]

# -- explanation, writing and everyday chat --------------------------------------------------

TOPICS = [
    "photosynthesis", "black holes", "the water cycle", "inflation", "vaccines", "the internet", "blockchain",
    "machine learning", "climate change", "plate tectonics", "the immune system", "compound interest", "electric cars",
    "solar panels", "the French Revolution", "the stock market", "DNA", "gravity", "the moon's phases", "earthquakes",
    "recycling", "the human heart", "sleep", "antibiotics", "volcanoes", "rainbows", "nuclear energy", "democracy",
    "supply and demand", "the Roman Empire", "the printing press", "coral reefs", "hurricanes", "the greenhouse effect",
    "evolution", "memory in the brain", "encryption", "GPS", "3D printing", "quantum computers", "the placebo effect",
    "jet engines", "tides", "batteries", "the Renaissance", "bees and pollination", "wind turbines", "cloud computing",
    "operating systems", "neural networks", "the speed of light", "seasons on Earth", "the stock exchange", "taxes",
    "credit scores", "the Olympic Games", "coffee", "chocolate making", "bread baking", "fermentation", "rust on iron",
    "magnets", "static electricity", "lightning", "the ozone layer", "deserts", "rainforests", "glaciers", "the ocean floor",
    "migration of birds", "dinosaurs", "the Industrial Revolution", "the Silk Road", "ancient Egypt", "the Cold War",
    "the United Nations", "human rights", "open-source software", "version control", "databases", "compilers",
    "the TCP/IP model", "password security", "two-factor authentication", "recursion", "sorting algorithms",
    "time zones", "calendars", "the metric system", "music theory", "jazz", "impressionist painting", "photography",
    "meditation", "nutrition", "exercise and muscles", "caffeine", "allergies", "the common cold", "dreams",
]
EXPLAIN_TEMPLATES = [
    lambda r: f"Explain {r.choice(TOPICS)} in simple terms.",
    lambda r: f"How does {r.choice(TOPICS)} work?",
    lambda r: f"Explain {r.choice(TOPICS)} to a ten-year-old.",
    lambda r: f"What are the main advantages and disadvantages of {r.choice(TOPICS)}?",
    lambda r: f"What is the difference between {(pair := r.sample(TOPICS, 2))[0]} and {pair[1]}?",
    lambda r: f"Give me five interesting facts about {r.choice(TOPICS)}.",
    lambda r: f"Summarize the history of {r.choice(TOPICS)} in a few paragraphs.",
    lambda r: f"What are common misconceptions about {r.choice(TOPICS)}?",
    lambda r: f"Why is {r.choice(TOPICS)} important?",
    lambda r: f"Write a short lesson plan that teaches {r.choice(TOPICS)}.",
]
FORMS = ["a short poem", "a haiku", "a short story", "a limerick", "a blog post introduction", "a product description",
         "a persuasive paragraph", "a diary entry", "a news headline and lead paragraph", "a short dialogue"]
SUBJECTS = ["a rainy morning", "a lost cat", "the first day of school", "a robot learning to paint", "the ocean at night",
            "a small bakery", "friendship", "a mountain hike", "autumn leaves", "a city that never sleeps", "an old lighthouse",
            "a dragon who is afraid of fire", "time travel", "a garden in spring", "a long train journey", "a winning goal",
            "a forgotten letter", "the last day of summer", "a talking tree", "a space station"]
RECIPIENTS = ["my manager", "a customer", "my landlord", "a teacher", "a colleague", "a friend", "a new client", "my team"]
EMAIL_REASONS = ["asking for a day off", "apologizing for a late delivery", "requesting a meeting next week",
                 "following up on an unpaid invoice", "thanking them for their help", "declining an invitation politely",
                 "announcing a project delay", "asking for feedback on a report", "introducing myself", "reporting a broken heater"]
WRITING_TEMPLATES = [
    lambda r: f"Write {r.choice(FORMS)} about {r.choice(SUBJECTS)}.",
    lambda r: f"Write an email to {r.choice(RECIPIENTS)} {r.choice(EMAIL_REASONS)}.",
    lambda r: f"Write {r.choice(FORMS)} about {r.choice(TOPICS)}.",
    lambda r: f"Write a short speech for {r.choice(['a wedding', 'a graduation', 'a retirement party', 'a team launch', 'a birthday', 'a school assembly'])}.",
    lambda r: f"Write a cover letter for a job as {r.choice(JOBS)}.",
    lambda r: f"Rewrite this sentence to sound more formal: '{r.choice(INFORMAL)}'",
]
JOBS = ["a software engineer", "a nurse", "a teacher", "a graphic designer", "a data analyst", "a chef", "a librarian",
        "a sales manager", "an electrician", "a marketing assistant"]
INFORMAL = ["hey, can u send me that file asap?", "the meeting was kinda pointless tbh", "we gotta fix this bug before friday",
            "thanks a ton for the help yesterday", "i can't make it, something came up"]
GOALS = ["sleep better", "learn a new language", "save money", "start running", "eat healthier", "be more productive",
         "make new friends in a new city", "prepare for a job interview", "learn to cook", "reduce stress", "read more books",
         "start a small business", "learn to play the guitar", "keep a houseplant alive", "travel on a budget"]
CHAT_TEMPLATES = [
    lambda r: f"How can I {r.choice(GOALS)}?",
    lambda r: f"Give me a step-by-step plan to {r.choice(GOALS)}.",
    lambda r: f"What are some tips to {r.choice(GOALS)}?",
    lambda r: f"I want to {r.choice(GOALS)}. Where should I start?",
    lambda r: f"Suggest a {r.choice(['three', 'five', 'seven'])}-day itinerary for a trip to {r.choice(PLACES)}.",
    lambda r: f"What should I pack for a week in {r.choice(PLACES)}?",
    lambda r: f"Recommend some {r.choice(['books', 'movies', 'podcasts', 'board games', 'hobbies'])} for someone who likes {r.choice(TOPICS)}.",
    lambda r: f"Give me a simple recipe for {r.choice(DISHES)}.",
    lambda r: f"What is a good way to explain {r.choice(TOPICS)} at a dinner party?",
    lambda r: f"Can you help me decide between {(pair := r.sample(CHOICES, 2))[0]} and {pair[1]}?",
]
PLACES = ["Paris", "Tokyo", "New York", "Rome", "Iceland", "Barcelona", "Kyoto", "Cape Town", "Lisbon", "Vancouver",
          "Mexico City", "Istanbul", "Sydney", "Prague", "Bangkok"]
DISHES = ["pancakes", "tomato soup", "fried rice", "guacamole", "banana bread", "a vegetable curry", "spaghetti carbonara",
          "lentil salad", "chocolate chip cookies", "a Greek salad", "scrambled eggs", "homemade pizza"]
CHOICES = ["a laptop", "a tablet", "renting", "buying a house", "learning Python", "learning JavaScript", "a cat", "a dog",
           "working from home", "working in an office", "a gym membership", "running outdoors"]

CATEGORY_TEMPLATES = {
    "math": MATH_TEMPLATES, "code": CODE_TEMPLATES, "explanation": EXPLAIN_TEMPLATES,
    "writing": WRITING_TEMPLATES, "chat": CHAT_TEMPLATES,
}
COUNTS = {"math": 800, "code": 900, "explanation": 600, "writing": 450, "chat": 450}
MULTITURN_COUNT = 400
FOLLOW_UPS = [
    "Can you explain that more simply?", "Can you give me an example?", "Can you make it shorter?",
    "Why is that?", "What would change if the numbers were doubled?", "Can you summarize that in three bullet points?",
    "Can you add comments to the code?", "Is there a faster way to do this?", "Can you write it in another language?",
    "What are common mistakes people make here?", "Thanks! Can you go into more detail on the first point?",
    "Can you turn that into a short quiz with answers?",
]


def compose(seed: int = SEED) -> list[dict]:
    """The training rows: ``{"id", "category", "prompt"}``, plus for multi-turn rows a
    ``follow_up`` asked after the target's own answer to ``prompt``. No row's prompt is in
    ``eval.jsonl``."""
    rng = random.Random(seed)
    with open(HERE / "eval.jsonl", encoding="utf-8") as f:
        held_out = {json.loads(line)["prompt"] for line in f if line.strip()}
    rows, seen = [], set(held_out)
    for category, templates in CATEGORY_TEMPLATES.items():
        made, tries = 0, 0
        while made < COUNTS[category] and tries < 50 * COUNTS[category]:
            tries += 1
            prompt = rng.choice(templates)(rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            rows.append({"id": f"{category}-synth-{made:04d}", "category": category, "prompt": prompt})
            made += 1
    for i, first in enumerate(rng.sample(rows, MULTITURN_COUNT)):
        rows.append({"id": f"multiturn-synth-{i:04d}", "category": "multiturn", "prompt": first["prompt"],
                     "follow_up": rng.choice(FOLLOW_UPS)})
    rng.shuffle(rows)
    return rows


def main() -> None:
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m bastion.prompts.synth OUT.jsonl")
    rows = compose()
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} prompts to {sys.argv[1]}")


if __name__ == "__main__":
    main()
