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


class _Form(HTMLParser):
    """The fields of one `<form>` and the values they hold as the page shows them."""

    def __init__(self, form_id: str):
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.data: dict[str, list[str]] = {}
        self.select: str | None = None
        # A select with no option selected posts its first, unless it is a multiple one.
        self.first_option: str | None = None
        self.first_option_posted = True
        self.textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("id") == self.form_id
        if not self.inside or "disabled" in attrs:
            return
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in ("submit", "button", "file"):
            if attrs.get("type") not in ("checkbox", "radio"):
                self.data.setdefault(name, []).append(attrs.get("value") or "")
            elif "checked" in attrs:
                checked = attrs.get("value")
                self.data.setdefault(name, []).append("on" if checked is None else checked)
        elif tag == "select":
            self.select, self.first_option = name, None
            self.first_option_posted = "multiple" not in attrs
        elif tag == "option" and self.select:
            value = attrs.get("value") or ""
            if self.first_option is None:
                self.first_option = value
            if "selected" in attrs:
                self.data.setdefault(self.select, []).append(value)
        elif tag == "textarea" and name:
            self.textarea = name
            self.data.setdefault(name, []).append("")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_data(self, data):
        if self.textarea:
            self.data[self.textarea][-1] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select:
            first = self.first_option if self.first_option_posted else None
            if self.select not in self.data and first is not None:
                self.data[self.select] = [first]
            self.select = None
        elif tag == "textarea" and self.textarea:
            # A browser drops the newline that opens a textarea's content (Django writes one).
            value = self.data[self.textarea][-1]
            self.data[self.textarea][-1] = value.removeprefix("\r").removeprefix("\n")
            self.textarea = None


def form_data(html: str, form_id: str) -> dict[str, list[str]]:
    """What a browser posts from the page's form `form_id` if nothing in it is changed."""
    form = _Form(form_id)
    form.feed(html)
    form.close()
    return form.data
