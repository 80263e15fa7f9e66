// A table of rows from one of the console's paged endpoints: filter,
// sort by any column, page through thousands of rows (the server sorts,
// filters and cuts; the page holds only the rows it shows).

import { api, el, fill, num } from "./util.js";

export class PagedTable {
  /**
   * @param {HTMLElement} root
   * @param {object} options
   *   endpoint: "/api/console/destinations"
   *   columns: [{key, label, numeric, format: (value, row) => string|Node}]
   *   sort, order: the initial sort
   *   kinds: optional [[value, label], ...] for a kind filter
   *   actions: optional (row) => [Node], a last column of buttons
   *   empty: what to say when there are no rows
   */
  constructor(root, options) {
    this.root = root;
    this.options = options;
    this.state = { q: "", kind: "", sort: options.sort, order: options.order || "asc", offset: 0, limit: 50 };
    this.busy = false;
    this.filter = el("input", {
      type: "search",
      placeholder: options.placeholder || "Filter by name",
      class: "filter",
      oninput: () => {
        this.state.q = this.filter.value;
        this.state.offset = 0;
        this.refresh();
      },
    });
    const tools = [this.filter];
    if (options.kinds) {
      this.kind = el(
        "select",
        {
          class: "kind",
          onchange: () => {
            this.state.kind = this.kind.value;
            this.state.offset = 0;
            this.refresh();
          },
        },
        options.kinds.map(([value, label]) => el("option", { value }, label)),
      );
      tools.push(this.kind);
    }
    this.status = el("span", { class: "paging-status" });
    this.prev = el("button", { type: "button", class: "prev", onclick: () => this.move(-1) }, "‹ Previous");
    this.next = el("button", { type: "button", class: "next", onclick: () => this.move(1) }, "Next ›");
    this.error = el("p", { class: "error", role: "alert" });
    tools.push(el("span", { class: "paging" }, this.prev, this.status, this.next));
    this.head = el("tr");
    this.body = el("tbody");
    fill(root, el("div", { class: "toolbar" }, tools), this.error, el("table", { class: "data" }, el("thead", {}, this.head), this.body));
    this.renderHead();
  }

  renderHead() {
    const cells = this.options.columns.map((c) => {
      const sorted = this.state.sort === c.key;
      const mark = sorted ? (this.state.order === "asc" ? " ▲" : " ▼") : "";
      return el(
        "th",
        {
          class: c.numeric ? "num sortable" : "sortable",
          "data-key": c.key,
          "aria-sort": sorted ? (this.state.order === "asc" ? "ascending" : "descending") : null,
          onclick: () => this.sortBy(c),
        },
        c.label + mark,
      );
    });
    if (this.options.actions) cells.push(el("th", {}, ""));
    fill(this.head, cells);
  }

  sortBy(column) {
    if (this.state.sort === column.key) this.state.order = this.state.order === "asc" ? "desc" : "asc";
    else {
      this.state.sort = column.key;
      this.state.order = column.numeric ? "desc" : "asc";
    }
    this.state.offset = 0;
    this.renderHead();
    this.refresh();
  }

  move(direction) {
    const offset = this.state.offset + direction * this.state.limit;
    if (offset < 0 || (this.total !== undefined && offset >= this.total)) return;
    this.state.offset = offset;
    this.refresh();
  }

  /** Fetch the current page again (skipped while a fetch is under way, unless forced). */
  async refresh(force) {
    if (this.busy && !force) {
      this.again = true;
      return;
    }
    this.busy = true;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(this.state)) if (v !== "") params.set(k, String(v));
    try {
      const data = await api("GET", `${this.options.endpoint}?${params}`);
      this.render(data);
      this.error.textContent = "";
    } catch (e) {
      this.error.textContent = `Could not load: ${e.message}`;
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    }
  }

  render(data) {
    this.total = data.total;
    if (data.offset >= data.total && data.total > 0) {
      this.state.offset = Math.max(0, Math.floor((data.total - 1) / data.limit) * data.limit);
      this.refresh(true);
      return;
    }
    const first = data.total ? data.offset + 1 : 0;
    const last = data.offset + data.items.length;
    this.status.textContent = `${num(first)}–${num(last)} of ${num(data.total)}`;
    this.prev.disabled = data.offset === 0;
    this.next.disabled = last >= data.total;
    const rows = data.items.map((row) => {
      const cells = this.options.columns.map((c) => {
        const value = c.format ? c.format(row[c.key], row) : row[c.key];
        return el("td", { class: c.numeric ? "num" : null, "data-key": c.key }, value ?? "");
      });
      if (this.options.actions) cells.push(el("td", { class: "actions" }, this.options.actions(row)));
      return el("tr", { "data-id": this.options.rowId ? this.options.rowId(row) : null }, cells);
    });
    if (!rows.length) {
      const span = this.options.columns.length + (this.options.actions ? 1 : 0);
      rows.push(el("tr", { class: "empty" }, el("td", { colspan: span }, this.options.empty || "Nothing here.")));
    }
    fill(this.body, rows);
  }
}
