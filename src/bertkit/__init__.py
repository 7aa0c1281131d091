"""bertkit: BERT from WordPiece to serving, with Hugging Face compatible model directories."""

from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.model import BertForPreTraining, BertModel
from bertkit.tokenizer import Encoding, Tokenizer

__all__ = ["BertConfig", "BertForPreTraining", "BertModel", "BertkitError", "Encoding", "Tokenizer"]
__version__ = "0.1.0"
