# A task: helpers and constants at top level are kept; the last top-level
# def is the entry, called with the task's input.
GREETING = "hello"


def shout(text):
    return text.upper() + "!"


def main(name):
    print("computing a greeting")  # captured apart from the result
    return {"greeting": shout(f"{GREETING}, {name}"), "length": len(name)}
