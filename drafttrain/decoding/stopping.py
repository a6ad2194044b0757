"""When generation ends: EOS, max_new_tokens and stop strings, checked token by token.

Every decoding mode feeds its committed tokens through the same checker one at a time, so all
modes stop at exactly the same token.
"""

from __future__ import annotations


class StopChecker:
    def __init__(self, max_new_tokens: int, eos_token_ids: tuple[int, ...] = (),
                 stop_strings: tuple[str, ...] = (), tokenizer=None) -> None:
        if stop_strings and tokenizer is None:
            raise ValueError("stop strings need a tokenizer to decode the generated text")
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = frozenset(eos_token_ids)
        self.stop_strings = stop_strings
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.done = False

    def feed(self, token: int) -> bool:
        """Append one token; True when generation must end with it (it is kept)."""
        self.tokens.append(token)
        self.done = (len(self.tokens) >= self.max_new_tokens or token in self.eos_token_ids
                     or self._hit_stop_string())
        return self.done

    def _hit_stop_string(self) -> bool:
        if not self.stop_strings:
            return False
        longest = max(len(s) for s in self.stop_strings)
        # a tail long enough to hold any stop string ending in the newest token, even when every
        # character takes several byte-level tokens (up to 4 bytes per character in UTF-8)
        tail = self.tokenizer.decode(self.tokens[-(4 * longest + 8):])
        return any(stop in tail for stop in self.stop_strings)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.tokens)
