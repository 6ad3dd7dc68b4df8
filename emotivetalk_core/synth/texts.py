"""What SynthTalk's people say: pseudo-sentences of real words in each world language.

eSpeak reads real words with their real phonemes, so the mouth sees each language's mix of
vowels and closures; the word order is random (nobody needs the meaning), and commas and full
stops give eSpeak's clause pauses, so clips hold speech and silence.
"""

from __future__ import annotations

import numpy as np

WORDS = {
    "en": ("hello", "morning", "water", "people", "table", "window", "mother", "paper", "happy", "about", "under",
           "bring", "music", "every", "number", "open", "little", "maybe", "should", "better", "moment", "yellow",
           "over", "money", "blue", "purple", "cheese", "boat", "thank", "you", "never", "wonder", "apple", "bottle",
           "summer", "village", "movie", "deep", "shoe", "chair", "funny", "bubble", "mountain", "river", "simple"),
    "de": ("guten", "morgen", "wasser", "mutter", "fenster", "papier", "immer", "bitte", "danke", "schön", "blume",
           "baum", "haus", "maus", "über", "mittag", "sommer", "winter", "lampe", "buch", "müde", "ruhig", "abend",
           "brot", "vogel", "zeitung", "wiese", "tisch", "stuhl", "himmel", "wolke", "kuchen", "apfel", "mensch"),
    "fr": ("bonjour", "merci", "maman", "papa", "fenêtre", "musique", "beaucoup", "pomme", "bateau", "rouge",
           "bleu", "toujours", "jamais", "petit", "monde", "matin", "soleil", "chapeau", "oiseau", "plume", "bouche",
           "maison", "jardin", "lune", "voiture", "table", "chanson", "poisson", "nuage", "montagne"),
    "es": ("hola", "gracias", "mañana", "agua", "madre", "padre", "ventana", "música", "mucho", "pequeño", "mundo",
           "sol", "luna", "boca", "casa", "jardín", "mesa", "camino", "barco", "manzana", "pájaro", "verde", "azul",
           "nube", "montaña", "palabra", "siempre", "nunca", "bueno", "tiempo"),
    "it": ("ciao", "grazie", "mamma", "papà", "finestra", "musica", "molto", "piccolo", "mondo", "sole", "luna",
           "bocca", "casa", "giardino", "tavolo", "barca", "mela", "uccello", "verde", "azzurro", "nuvola",
           "montagna", "parola", "sempre", "mai", "buono", "tempo", "pane", "latte", "bambino"),
}
_LANGUAGE_WORDS = {"en-us": "en"}


def sentence(rng: np.random.Generator, language: str, min_words: int = 3, max_words: int = 10) -> str:
    """A random pseudo-sentence in ``language`` with a pause (comma) in longer ones."""
    words = WORDS[_LANGUAGE_WORDS.get(language, language)]
    count = int(rng.integers(min_words, max_words + 1))
    chosen = [str(words[i]) for i in rng.integers(0, len(words), count)]
    if count >= 6:
        cut = int(rng.integers(2, count - 2))
        chosen[cut] += ","
    text = " ".join(chosen)
    return text[0].upper() + text[1:] + str(rng.choice([".", ".", "!", "?"]))
