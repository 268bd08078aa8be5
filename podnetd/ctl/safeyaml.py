"""YAML from files a user hands podnetctl (client configs, manifests), loaded safely.

yaml.SafeLoader builds no Python objects, but aliases still let a few hundred bytes stand for
gigabytes once the document is walked or turned into JSON (the "billion laughs"); neither a
kubeconfig nor a manifest needs them, so an alias is refused where it is read.
"""
import yaml


class YamlError(ValueError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_all(text: str) -> list:
    """Every document of a YAML stream (None for an empty one), or YamlError with where."""
    try:
        return list(yaml.load_all(text, Loader=_NoAliasLoader))
    except yaml.YAMLError as e:
        raise YamlError(" ".join(str(e).split())) from None


def load(text: str):
    docs = load_all(text)
    if len(docs) > 1:
        raise YamlError(f"expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None
