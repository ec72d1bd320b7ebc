"""A netstring framing (``5:hello,``) as a third party would ship it: the source of a plugin module for tests.

Written to a temporary "installed" distribution by the tests (test_framings.py), never imported from here.
"""

SOURCE = '''
import attrs

from sockwork import FramingEntry, hookimpl


@attrs.frozen(kw_only=True)
class NetstringOptions:
    max_message: int = 65536


class Netstring:
    """``LENGTH:BYTES,`` with LENGTH in decimal ASCII (D. J. Bernstein's netstrings)."""

    def __init__(self, max_message):
        self.max_message = max_message

    def split(self, buffer):
        messages, start = [], 0
        while True:
            colon = buffer.find(b":", start, start + 12)
            if colon < 0:
                if len(buffer) - start > 11:
                    raise ValueError("netstring length too long or missing")
                break
            length = int(buffer[start:colon] or b"x")
            if length > self.max_message:
                raise ValueError(f"announced a {length}-byte message; the limit is {self.max_message}")
            end = colon + 1 + length
            if len(buffer) < end + 1:
                break
            if buffer[end] != 44:
                raise ValueError("netstring does not end with a comma")
            messages.append(bytes(buffer[colon + 1:end]))
            start = end + 1
        del buffer[:start]
        return messages

    def finish(self, buffer):
        left = len(buffer)
        buffer.clear()
        if left:
            raise ValueError(f"the stream ended inside a netstring ({left} bytes of it)")
        return []

    def frame(self, reply):
        return b"%d:%s," % (len(reply), reply)


@hookimpl
def sockwork_add_framings():
    return [FramingEntry("netstring", lambda options: Netstring(options.max_message), NetstringOptions,
                         description="LENGTH:BYTES, (netstrings)")]
'''
