"""Token ids to text deltas, as they come, cut at the first stop string."""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    """Incremental detokenization with stop strings.

    Each :meth:`feed` returns the new text that is safe to send: text that cannot yet be part of a stop
    string (the last ``len(longest stop) - 1`` characters are held back) and no half-decoded character.
    Once a stop string appears, the text is cut before it and :attr:`stopped` is set. :meth:`finish`
    returns the rest; the deltas add up to the tokenizer's decoding of all ids, cut at the first stop.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] were decoded last time, as context for the next token
        self._read = 0
        self._sent = 0  # characters of `text` already returned
        self.text = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def feed(self, token_id: int) -> str:
        """Take one token id; return the text that can be sent now (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        # Decoding a token next to its predecessors keeps the spaces a lone decode would drop.
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The text not sent yet, once generation has ended."""
        if not self.stopped:
            whole = self._decode(self._ids)
            if whole.startswith(self.text[: self._sent]):
                self.text = whole
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        start = max(0, self._sent - self._hold)
        hits = [i for s in self._stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = final = True
        end = len(self.text) if final else max(self._sent, len(self.text) - self._hold)
        delta = self.text[self._sent : end]
        self._sent = end
        return delta
