// Markdown to DOM, safe by construction: model text and tool output are untrusted.
//
// Nothing here parses HTML. Every piece of text reaches the page through a Text node
// (document.createTextNode), so "<img onerror=…>" is shown, never run; the only elements
// made are the ones named below, and the only attributes set are a link's href (http, https
// or mailto, checked by URL parsing) with title/target/rel, and a code block's class. A link
// whose text is not its URL shows where it goes after it.
// Images are not rendered (a picture from the model could track the reader): shown as links.
//
// Supported: paragraphs, # headings, - * + and 1. lists, > quotes, ``` fenced code,
// `code`, **bold**, *em* / _em_, [text](url), <https://autolinks>, bare https:// URLs.

const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

/** The URL to link to, or null when it is not an absolute http(s)/mailto URL. */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(raw.trim());
  } catch {
    return null;
  }
  return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
}

function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const child of children) node.append(child);
  return node;
}

function text(value) {
  return document.createTextNode(value);
}

/** Where a link goes, as a reader can judge it: the host of an http(s) URL (in ASCII, so
 * a look-alike name shows as xn--…), the address of a mailto:. */
function destination(href) {
  const url = new URL(href);
  return url.protocol === "mailto:" ? decodeURIComponent(url.pathname) : url.host;
}

/**
 * A link to `raw` labelled `label`, or null when `raw` is not a safe URL. A label is the
 * model's to choose, so `[https://your-bank.example](https://elsewhere.example)` would lie:
 * unless the label's text is the URL itself, the destination follows it, as text, and the
 * whole URL is the link's title. A URL that is its own text lies too when it names a user
 * (`https://your-bank.example@elsewhere.example/`) or holds other than printable ASCII (a
 * look-alike host, a right-to-left override): its destination follows it as well.
 */
function link(label, raw) {
  const href = safeHref(raw);
  if (href === null) return null;
  const a = el("a", ...label);
  a.href = href;
  a.title = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  const shown = a.textContent.trim();
  const url = new URL(href);
  const plain = url.username === "" && url.password === "" && /^[\x21-\x7e]*$/.test(shown);
  if (plain && (shown === raw.trim() || shown === href)) return a;
  const where = el("span", text(` (${destination(href)})`));
  where.className = "link-dest";
  return el("span", a, where);
}

// Inline constructs, tried at each position in this order.
const INLINE = [
  [/^`([^`\n]+)`/, (m) => el("code", text(m[1]))],
  // A label holds no bracket and a URL no parenthesis but one balanced pair, a <link> no
  // `<`: each try then stops at the next bracket, parenthesis or `<`, and a line of
  // thousands of `[` or `<https:` costs a scan each (it was one to the end of the line per
  // `[`: seconds, on every replay).
  [/^!?\[([^[\]\n]*)\]\(((?:[^()\s]|\([^()\s]*\))+)\)/, (m) => link(inline(m[1], false), m[2])],
  [/^<((?:https?|mailto):[^<>\s]+)>/, (m) => link([text(m[1])], m[1])],
  [/^https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"]/, (m) => link([text(m[0])], m[0])],
  [/^\*\*([^\n]+?)\*\*/, (m, links) => el("strong", ...inline(m[1], links))],
  [/^__([^\n]+?)__/, (m, links) => el("strong", ...inline(m[1], links))],
  [/^\*([^\s*][^*\n]*?)\*/, (m, links) => el("em", ...inline(m[1], links))],
  [/^_([^\s_][^_\n]*?)_(?![A-Za-z0-9])/, (m, links) => el("em", ...inline(m[1], links))],
];

const LINKS = new Set(INLINE.slice(1, 4).map(([pattern]) => pattern));

/** Inline markdown of one line or paragraph, as a list of nodes; no links in it when
 * `links` is false (a link's own label: a link in a link is no link). */
export function inline(source, links = true) {
  const out = [];
  let plain = "";
  let i = 0;
  while (i < source.length) {
    const rest = source.slice(i);
    let made = null;
    let used = 0;
    const wordStart = i === 0 || /[\s([{]/.test(source[i - 1]);
    for (const [pattern, make] of INLINE) {
      if (pattern.source.startsWith("^_") && !wordStart) continue;
      if (!links && LINKS.has(pattern)) continue;
      const m = pattern.exec(rest);
      if (m === null) continue;
      made = make(m, links);
      used = m[0].length;
      break;
    }
    if (made === null) {
      plain += source[i];
      i += 1;
      continue;
    }
    if (plain) out.push(text(plain));
    plain = "";
    out.push(made);
    i += used;
  }
  if (plain) out.push(text(plain));
  return out;
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, n) => {
    if (n > 0) p.append(el("br"));
    p.append(...inline(line));
  });
  return p;
}

function codeBlock(lines, lang, onCopy) {
  const code = el("code", text(lines.join("\n")));
  if (/^[A-Za-z0-9_+-]{1,30}$/.test(lang)) code.className = `language-${lang}`;
  const pre = el("pre", code);
  if (onCopy) {
    const copy = el("button", text("Copy"));
    copy.type = "button";
    copy.className = "copy";
    copy.addEventListener("click", () => onCopy(code.textContent, copy));
    return el("div", pre, copy);
  }
  return pre;
}

const FENCE = /^ {0,3}(```+|~~~+)\s*([^`\s]*)/;
// No lazy `(.*?)` before optional `\s*#*\s*`: on "# x", a few thousand spaces and "y" that
// backtracked for seconds (cubic). The closing #s are taken off by headingText.
const HEADING = /^ {0,3}(#{1,6})\s+(.*)$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

/** A heading's text without its closing sequence: trailing `#`s after a space ("# Title ##"),
 * not the `#` of "C#". */
function headingText(raw) {
  const trimmed = raw.trimEnd();
  let end = trimmed.length;
  while (end > 0 && trimmed[end - 1] === "#") end -= 1;
  if (end === 0) return "";
  return /\s/.test(trimmed[end - 1]) ? trimmed.slice(0, end).trimEnd() : trimmed;
}

/** Quotes nest at most this deep; model text is untrusted, and a recursion per `>` would
 * let a long run of them overflow the stack and hang the page on every replay. */
const MAX_QUOTE_DEPTH = 8;

/**
 * Render markdown `source` into a DocumentFragment of safe nodes. `onCopy(text, button)`,
 * when given, adds a Copy button to each code block. An unclosed fence (text still
 * streaming) renders as code up to the end.
 */
export function renderMarkdown(source, onCopy = null, depth = 0) {
  const quotes = depth < MAX_QUOTE_DEPTH; // deeper `>` lines stay text: bounded recursion
  const out = document.createDocumentFragment();
  // U+2028 and U+2029 end a line too: `.` does not match them, and a list item or heading
  // line holding one made the patterns below backtrack over the whole line for each space.
  const lines = source.replace(/\r\n?|[\u2028\u2029]/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      out.append(codeBlock(body, fence[2], onCopy));
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      out.append(el(`h${Math.min(heading[1].length + 2, 6)}`, ...inline(headingText(heading[2]))));
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.append(el("hr"));
      i += 1;
      continue;
    }
    if (quotes && QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(QUOTE.exec(lines[i++])[1]);
      out.append(el("blockquote", renderMarkdown(body.join("\n"), onCopy, depth + 1)));
      continue;
    }
    const kind = BULLET.test(line) ? [BULLET, "ul", 1] : ORDERED.test(line) ? [ORDERED, "ol", 2] : null;
    if (kind) {
      const [pattern, tag, group] = kind;
      const list = el(tag);
      const first = pattern.exec(line);
      if (tag === "ol" && first[1] !== "1") list.start = Number(first[1]);
      while (i < lines.length && pattern.test(lines[i])) {
        const item = [pattern.exec(lines[i++])[group]];
        // Indented continuation lines belong to the item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !pattern.test(lines[i])) {
          item.push(lines[i++].trim());
        }
        list.append(el("li", ...inline(item.join(" "))));
      }
      out.append(list);
      continue;
    }
    const body = [];
    while (
      i < lines.length &&
      lines[i].trim() &&
      !FENCE.test(lines[i]) &&
      !HEADING.test(lines[i]) &&
      !(quotes && QUOTE.test(lines[i])) &&
      !BULLET.test(lines[i]) &&
      !ORDERED.test(lines[i])
    ) {
      body.push(lines[i++]);
    }
    out.append(paragraph(body));
  }
  return out;
}
