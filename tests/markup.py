"""What a browser would make of a rendered page's markup: its duplicate ids, and the
paragraphs it would close early or invent (a list or block inside `<p>`, a stray `</p>`)."""

from collections import Counter
from html.parser import HTMLParser

# Start tags that close an open <p> (HTML's "p in button scope" rule), so markup written
# inside the paragraph ends up after it and its `</p>` becomes an empty <p></p>.
CLOSES_P = {
    "address", "article", "aside", "blockquote", "details", "div", "dl", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
    "hr", "main", "menu", "nav", "ol", "p", "pre", "section", "table", "ul",
}  # fmt: skip


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: list[str] = []
        self.faults: list[str] = []
        self.paragraph: list[str] | None = None  # the open <p>'s text, None when none is open

    def handle_starttag(self, tag, attrs):
        self.ids += [value for name, value in attrs if name == "id" and value is not None]
        if self.paragraph is not None and tag in CLOSES_P:
            self.faults.append(f"<{tag}> inside <p>")
            self.paragraph = None
        if tag == "p":
            self.paragraph = []
        elif self.paragraph is not None:
            self.paragraph.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_data(self, data):
        if self.paragraph is not None and data.strip():
            self.paragraph.append(data)

    def handle_endtag(self, tag):
        if tag != "p":
            return
        if not self.paragraph:
            self.faults.append("empty <p></p>")
        self.paragraph = None


def _parse(html: str) -> _Markup:
    markup = _Markup()
    markup.feed(html)
    markup.close()
    return markup


def duplicate_ids(html: str) -> list[str]:
    return sorted(name for name, count in Counter(_parse(html).ids).items() if count > 1)


def paragraph_faults(html: str) -> list[str]:
    """Each block a `<p>` holds and each empty `<p></p>` the page would show."""
    return _parse(html).faults
