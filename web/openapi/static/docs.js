// Starts Swagger UI on /docs with our OpenAPI document.
//
// The pinned swagger-ui-bundle (Swagger UI 4.15.5) renders OpenAPI 3.0 only: it refuses a
// document that says "openapi: 3.1.0". /openapi.json stays 3.1 for every other client; this
// page alone relabels its copy as 3.0.3 and rewrites the few 3.1 schema forms pydantic writes
// (anyOf with a null branch, const, numeric exclusive bounds) into their 3.0 spelling.
// Kept in a file rather than inline so the page's Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  var specUrl = document.currentScript.getAttribute("data-spec-url");

  function isNull(schema) {
    return schema && typeof schema === "object" && schema.type === "null";
  }

  function as30(node) {
    if (Array.isArray(node)) {
      return node.map(as30);
    }
    if (!node || typeof node !== "object") {
      return node;
    }
    var out = {};
    Object.keys(node).forEach(function (key) {
      out[key] = as30(node[key]);
    });
    if (Array.isArray(out.anyOf) && out.anyOf.some(isNull)) {
      var rest = out.anyOf.filter(function (branch) { return !isNull(branch); });
      delete out.anyOf;
      if (rest.length === 1 && !rest[0].$ref) {
        Object.assign(out, rest[0]);
      } else {
        out.anyOf = rest;  // 3.0 ignores siblings of $ref, so keep it wrapped
      }
      out.nullable = true;
    }
    if (Object.prototype.hasOwnProperty.call(out, "const")) {
      out.enum = [out["const"]];
      delete out["const"];
    }
    ["Minimum", "Maximum"].forEach(function (bound) {
      var key = "exclusive" + bound;
      if (typeof out[key] === "number") {
        out[bound.toLowerCase()] = out[key];
        out[key] = true;
      }
    });
    return out;
  }

  fetch(specUrl, { headers: { Accept: "application/json" } })
    .then(function (response) { return response.json(); })
    .then(function (spec) {
      var viewable = as30(spec);
      viewable.openapi = "3.0.3";
      window.ui = SwaggerUIBundle({
        spec: viewable,
        dom_id: "#swagger-ui",
        deepLinking: true,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      });
    });
})();
